"""Reading chest X-ray DICOMs into the arrays the model sees.

Pixels are decoded by pydicom and its decoder plugins (Pillow for JPEG
Baseline; pylibjpeg with pylibjpeg-libjpeg for JPEG Extended 12-bit, Lossless
and JPEG-LS; pylibjpeg-openjpeg for JPEG 2000; pydicom itself for RLE and the
uncompressed syntaxes), rendered to [0, 1] as a viewer would
(:mod:`~pneumonia.data.dicom.rendering`: Modality LUT, VOI LUT, Presentation LUT and
MONOCHROME1, or, for a file without a window, scaled by its stored range
``value / (2**BitsStored - 1)``: 255 for the 8-bit RSNA files), and resized to ``size`` x ``size`` and stored as uint8 (value/255). A non-square
image is stretched to the square, each axis by its own factor, like the
reference's ``cv2.resize``: the aspect ratio is not kept and nothing is cropped
or padded. :class:`~pneumonia.data.dicom.header.DicomInfo` keeps the original Rows and Columns, so a box
scales by ``size / columns`` across and ``size / rows`` down.

Fast path: for 8-bit JPEG Baseline files (all of RSNA's) shrunk to at most
half their side, Pillow decodes the JPEG frame with ``draft``, which lets the
decoder downscale in the DCT domain (by 2, 4 or 8) to the smallest size still
larger than the target, before the final bilinear resize. It differs from
decoding in full and then resizing by well under one grey level on average
(tests/test_dicom.py guards this); every other file takes the plain pydicom path.

Untrusted input: anything that is not a single-frame greyscale DICOM image
raises :class:`~pneumonia.core.errors.DicomReadError`, one line naming the file, the problem and what
to do; no other exception escapes for a bad file (tests/test_dicom_fuzz.py feeds
the reader hundreds of damaged files). Before anything is decoded, cheap checks
refuse:

* a header value the reader relies on that does not parse or make sense (Rows,
  Columns, BitsAllocated 8 or 16, 1 <= BitsStored <= BitsAllocated,
  PixelRepresentation, SamplesPerPixel, NumberOfFrames, PhotometricInterpretation,
  a window that is not one), or an image of more than
  :data:`~pneumonia.data.dicom.header.MAX_PIXELS` pixels, so a damaged header
  cannot make the reader allocate gigabytes;
* a file cut short, or with bytes after its last element (pydicom silently
  drops what it cannot read);
* a deflated data set (pydicom inflates it whole, without a size limit);
* uncompressed pixel data whose length is not Rows x Columns x BitsAllocated/8
  (one padding byte allowed), and compressed pixel data whose items do not fill
  it exactly: a cut file, or bytes lost or inserted, would otherwise give a
  shifted image;
* a JPEG Baseline (or Extended) frame that is not well formed: it must start
  with SOI, hold one 8-bit (Extended: 8- or 12-bit) greyscale sequential frame
  of the header's Rows x Columns and one scan with no marker inside the
  compressed data, and end with EOI (padding after it, 0x00 or 0xFF, is fine).
  A truncated frame is refused, never filled in with grey;
* a transfer syntax that no installed plugin decodes: the message names it and
  the packages that would.

Not refused: a PixelSpacing of zero or that does not parse makes the spacing
unknown (ImagerPixelSpacing is used when it is good), with the reason in
:attr:`~pneumonia.data.dicom.header.DicomInfo.pixel_spacing_note`; a file without the 128-byte preamble and
"DICM" is read when it holds pixel data and the image attributes. Whether the
file is a chest radiograph is :func:`~pneumonia.data.dicom.chest.chest_problem`'s question, not the reader's.

Limit: Pillow decodes JPEG leniently and does not report libjpeg's "corrupt
data" warnings, so damage inside the compressed data that keeps this structure
(bytes changed without creating a marker, or a frame cut and closed with a new
EOI) decodes to a damaged image that cannot be told from a real one here;
changed bytes of uncompressed pixels cannot be detected either (DICOM files
carry no checksum).

The modules:

    read.py        read_dicom, read_dicom_sizes: open, check, decode, render, resize
    header.py      read_header: the header values the reader uses; DicomInfo
    pixel_data.py  the pixel data's length, its single frame, a JPEG frame's structure
    rendering.py   decoded values to [0, 1] as a viewer shows them (LUTs, windowing)
    chest.py       chest_problem: a chest radiograph or not, by its header
    reasons.py     the wording of DicomReadError's reasons
"""
