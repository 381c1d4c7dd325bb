"""`mediflow dicom-node`: a DICOM Storage SCP that analyses chest films routed from a PACS and
writes a PRELIMINARY Structured Report (and optionally a Secondary Capture) back into the study.

Layers: `admission` decides from the header what is analysed; `queue` keeps received instances,
jobs and results in the study store; `scp` receives; `worker` analyses; `results` builds the SR
and SC; `sender` delivers them (C-STORE or STOW-RS); `node` wires them together.
"""

# Identifies MediFlow's own outputs when the PACS sends them back (admission.py) and names the
# device in the SR's observer context and the SC's equipment module.
MANUFACTURER = "MediFlow"
SERIES_DESCRIPTION_SR = "MediFlow AI result (PRELIMINARY)"
SERIES_DESCRIPTION_SC = "MediFlow AI heatmap (PRELIMINARY)"
