"""SDFSMIS: few-shot segmentation of a whole volume from a few annotated slices (SD-FSMIS).

The module file stays thin: module metadata here; the panel and logic live in ``SDFSMISLib.slicer``, the
self-test in ``Testing`` (beside this file, as SlicerNNUnet keeps its tests). Nothing imported here needs
PyTorch: it is installed on first use, through the PyTorch extension.
"""

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from SDFSMISLib.slicer.sample_data import registerSampleData
from SDFSMISLib.slicer.widget import SDFSMISWidget  # noqa: F401 - Slicer looks the widget class up by name here
from Testing.slicer_self_test import SDFSMISTest  # noqa: F401 - and the test class

CITATION = ("SD-FSMIS: Adapting Stable Diffusion for Few-Shot Medical Image Segmentation "
            "(method and released code: github.com/LeeX-Bruce/SD-FSMIS).")


class SDFSMIS(ScriptedLoadableModule):
    """Module metadata shown by 3D Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SD-FSMIS few-shot segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SDFSMIS Developers (SDFSMIS project)"]
        slicer.app.connect("startupCompleted()", registerSampleData)
        self.parent.helpText = _(
            "Paint an organ on one slice near its top, middle and bottom in a support volume (another patient, "
            "or the volume itself), pick the query volume and press Run: SD-FSMIS, a one-step Stable Diffusion "
            "1.5 model adapted to few-shot segmentation, propagates the segments through the whole query. "
            "Correct a slice of the result, add it as corrected and Run again to update its neighbourhood; "
            "export as .seg.nrrd or DICOM-SEG. Without weights of your own the bundled default model runs "
            "(a small model trained on CHAOS MR pseudo-labels and phantoms; its weights are CC BY-NC-SA 4.0, "
            "non-commercial). See the extension's README, section 'Use in 3D Slicer'."
            f"<br><br>If you use this module, please cite: {CITATION}"
        )
        self.parent.acknowledgementText = _(
            "Method: SD-FSMIS (Support-Query Interaction and Visual-to-Textual Condition Translator on Stable "
            "Diffusion 1.5), by the authors of the paper above; this module re-implements it for 3D Slicer. "
            "Stable Diffusion 1.5 (CreativeML Open RAIL-M) and DINOv2 (Apache-2.0) weights are not shipped and "
            "keep their own licenses. Slicer integration patterns follow SlicerNNUnet, SlicerNNInteractive, "
            "SlicerTotalSegmentator and SlicerMONAIAuto3DSeg."
        )
