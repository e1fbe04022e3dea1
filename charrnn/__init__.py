"""charrnn: character-level recurrent language models in numpy."""

__version__ = "0.1.0"

# after __version__, which cli imports
from charrnn.api import LanguageModel, load
from charrnn.dynamic import DynamicSettings
from charrnn.sample import Sampling

__all__ = ["DynamicSettings", "LanguageModel", "Sampling", "__version__", "load"]
