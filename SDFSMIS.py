"""SDFSMIS: few-shot segmentation of a whole volume from a few annotated slices (SD-FSMIS).

The module file stays thin: the library, and later the widget and logic, live in SDFSMISLib.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class SDFSMIS(ScriptedLoadableModule):
    """Module metadata shown by 3D Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SDFSMIS"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SDFSMIS developers"]
        self.parent.helpText = (
            "Propagates a segmentation from one annotated slice per sub-volume to a whole query volume "
            "with SD-FSMIS, a one-step Stable Diffusion 1.5 model adapted to few-shot segmentation. "
            "See README.md of the extension for the workflow and the weights it needs."
        )
        self.parent.acknowledgementText = (
            "Method: SD-FSMIS, few-shot medical image segmentation with Stable Diffusion "
            "(paper and released code by LeeX-Bruce et al.). Stable Diffusion 1.5 and DINOv2 weights "
            "are not shipped and keep their own licenses."
        )
