"""A tiny CLIP model trained on generated shapes, loaded the way the bot loads a local one."""

from pathlib import Path

_HERE = Path(__file__).parent
CONFIG_PATH = _HERE / "tiny-clip.json"
CHECKPOINT_PATH = _HERE / "tiny-clip.pt"
# open_clip names a model registered with add_model_config after its config file's stem.
MODEL_NAME = CONFIG_PATH.stem
