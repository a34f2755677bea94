"""Phantom chest X-rays in the layout of Kaggle's RSNA Pneumonia Detection Challenge.

The pipeline runs offline on this dataset exactly as it would on the real one:

    raw_dir/stage_2_train_images/<patientId>.dcm   8-bit JPEG Baseline DICOMs, like RSNA's
    raw_dir/stage_2_train_labels.csv               patientId,x,y,width,height,Target
    raw_dir/stage_2_detailed_class_info.csv        patientId,class

Everything follows from ``seed``: patient i's attributes and image come from
their own random stream, derived from ``(seed, i)``, so the files are
byte-identical whatever the number of worker processes.

Bit-stable across machines: every file (DICOMs and both CSVs) is byte-identical
on any x86-64 CPU for the same seed, size and library versions (numpy, scipy,
Pillow with its libjpeg-turbo, pydicom). The images use exactly rounded
arithmetic only (+ - * / sqrt, integer work at full size), never numpy's or
libm's exp, tanh, cos or pow, whose last bit depends on the CPU's SIMD path;
tests/test_phantom.py compares the files written under numpy's best SIMD path
and under its baseline.

Coordinates: boxes are in pixels of the ``size`` x ``size`` image, origin at the
top-left corner, x to the right (columns), y down (rows), like RSNA's. The
anatomy is described in *body coordinates*: ``a`` across (0.5 = midline,
larger = viewer's right = patient's left), ``b`` down from the top of the image,
both as fractions of the image side; a per-image affine transform (shift,
scale, rotation) maps them onto the image.

Difficulty is one knob, :data:`~pneumonia.data.phantom.render.OPACITY_CONTRAST`.

The modules, in the order an image is made:

    patients.py      draw_patients: class, opacities, findings, demographics
    render.py        render: one patient's radiograph and its boxes, from
    anatomy.py         the chest in body coordinates (pose, lungs, heart, bones),
    findings.py        opacities with their boxes, a nodule's place, tubes and leads,
    exact_math.py      the exactly rounded stand-ins for exp, cos and a blur,
    film.py            and the film: enlarged, grained and exposed in integers
    dicom_writer.py  write_dicom: the radiograph as a DICOM, RSNA's attributes
    dataset.py       generate (the dataset), preview, radiographs_without_lungs
"""
