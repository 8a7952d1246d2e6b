"""The video domain: clips of MP4, MKV, WebM, AVI and MOV files (decord, PyAV where decord
cannot) and of multi-frame DICOM cine loops (pydicom)."""
