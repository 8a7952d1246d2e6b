"""radiology: CT and MRI volumes (NIfTI files, DICOM series) preprocessed with MONAI."""
