"""The ophthalmology domain: colour fundus photographs (JPEG, PNG, TIFF, ophthalmic DICOM)."""
