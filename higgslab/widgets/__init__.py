"""ipywidgets composites for notebooks; each exposes its parts (sliders, buttons, images, the data last
drawn) so a plain pytest can drive it: setting a slider's value or calling `button.click()` runs the
same callbacks a browser would, synchronously."""

from higgslab.widgets.codebook_explorer import CodebookExplorer
from higgslab.widgets.dualffn_inspector import DualFFNInspector
from higgslab.widgets.generation_player import GenerationPlayer
from higgslab.widgets.spectrogram_compare import SpectrogramCompare
from higgslab.widgets.token_stream import TokenStreamViewer

__all__ = [
    "CodebookExplorer",
    "DualFFNInspector",
    "GenerationPlayer",
    "SpectrogramCompare",
    "TokenStreamViewer",
]
