"""charrnn: character-level recurrent language models in numpy."""

__version__ = "0.1.0"

from charrnn.api import LanguageModel, load  # after __version__, which cli imports

__all__ = ["LanguageModel", "__version__", "load"]
