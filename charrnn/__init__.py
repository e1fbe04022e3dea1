"""charrnn: character-level recurrent language models: train, sample, evaluate, serve."""

__version__ = "0.2.1"  # pyproject.toml reads it; CHANGELOG.md says what changed

# after __version__, which cli imports
from charrnn.api import LanguageModel, load
from charrnn.dynamic import DynamicSettings
from charrnn.sample import Sampling

__all__ = ["DynamicSettings", "LanguageModel", "Sampling", "__version__", "load"]
