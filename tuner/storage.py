"""Where runs live: a local folder or a URI (``s3://``, ``gs://``, ``file://``) that every node
of a cluster can reach. Local paths use the filesystem; URIs go through pyarrow, as Ray's own
storage does.
"""
from __future__ import annotations

from pathlib import Path

STATE_FILE = "state.pt"  # a trial checkpoint: tuner.train.Trainer.state_dict()
MODEL_FILE = "model.pt"  # an exported model: the state_dict of tuner.model.DenoisingAutoencoder
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPEC_FILE = "spec.yaml"
STUDY_FILE = "study.db"  # the Optuna study of the search (tuner.study), SQLite by default


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(storage: str) -> str:
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write(folder: str, name: str, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    if not is_uri(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, name).write_bytes(data)
        return
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(join(folder, name))
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def read_file(folder: str, name: str) -> bytes:
    """Read ``folder/name`` from a local path or a URI."""
    if not is_uri(folder):
        return Path(folder, name).read_bytes()
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(join(folder, name))
    with fs.open_input_stream(p) as f:
        return f.read()
