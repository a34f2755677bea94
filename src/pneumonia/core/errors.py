"""The project's own error types.

Stages turn any :class:`PneumoniaError` into a one-line message and exit code 1;
anything else is a bug and keeps its traceback.
"""


class PneumoniaError(Exception):
    """Bad input or configuration that the user can fix; the message says how."""


class ParamsError(PneumoniaError):
    """A setting in params.yaml is missing, misspelled, of the wrong type or out of range."""


class DatasetError(PneumoniaError):
    """The raw dataset (CSVs, image folder, archive) does not match the RSNA layout."""


class ImageReadError(PneumoniaError):
    """A file could not be read as a greyscale radiograph (DICOM, PNG or JPEG); ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):
        # Raised in conversion worker processes: must unpickle in the parent.
        return (type(self), (self.path, self.reason))


class DicomReadError(ImageReadError):
    """A file could not be read as a single-frame greyscale DICOM image."""


class NotChestError(DicomReadError):
    """A readable DICOM that is not a chest radiograph (Modality or BodyPartExamined say so)."""


class CredentialsError(PneumoniaError):
    """Kaggle credentials are missing or were refused."""
