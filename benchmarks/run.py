"""`make bench`: throughput and memory of the pipeline's hot paths, each beside its reference.

Every ratio is the median over paired runs on the same data in the same process
run, so machine noise hits both sides alike. Prints a table and writes
benchmarks/results.json. Phantom datasets are generated once into
benchmarks/.cache (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil
import torch

from pneumonia.data import rsna
from pneumonia.data.phantom.dataset import generate
from pneumonia.classification.classifier import load_classifier
from pneumonia.classification.data import XrayDataset, make_loader
from pneumonia.classification.inference import predict_probabilities
from pneumonia.core.architectures import build_network
from pneumonia.classification.model import PneumoniaClassifier
from pneumonia.core.params import load_params
from process_tree import TreeSampler

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"


def dataset(patients: int) -> Path:
    raw = CACHE / f"phantom_{patients}"
    if not (raw / rsna.LABELS_CSV).exists():
        print(f"generating {patients} phantom DICOMs (once) ...", flush=True)
        generate(raw, patients=patients, size=1024, seed=7)
    return raw


def dicom_paths(raw: Path) -> list[str]:
    return [str(raw / rsna.IMAGES_DIR / f"{p.patient_id}.dcm") for p in rsna.read_patients(raw)]


# --- conversion -------------------------------------------------------------------------------

CONVERT_SNIPPET = """
import sys, time
from pathlib import Path
from pneumonia.data import dicom_to_npy
from dataclasses import replace
from pneumonia.core.params import load_params
p = load_params(sys.argv[4])
p = replace(p, dicom_to_npy=replace(p.dicom_to_npy, image_size=int(sys.argv[3])), split=replace(p.split, train_size=0.8))
start = time.perf_counter()
dicom_to_npy.run(Path(sys.argv[1]), Path(sys.argv[2]), p.dicom_to_npy, p.split)
print(time.perf_counter() - start)
"""


def run_convert_stage(raw: Path, size: int) -> tuple[float, float, float]:
    """The dicom_to_npy stage's code in its own process.

    Returns the seconds of the stage's work (``dicom_to_npy.run``: CSVs, pool, decoding,
    manifest, the final rename), the seconds of the whole process (Python's start and
    imports too), and the peak RSS in MB of all its processes.
    """
    with tempfile.TemporaryDirectory(dir=CACHE) as out:
        start = time.perf_counter()
        process = psutil.Popen(
            [sys.executable, "-c", CONVERT_SNIPPET, str(raw), f"{out}/processed", str(size), str(ROOT / "params.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        with TreeSampler(process, interval=0.02) as sampler:
            process.wait()
        process_seconds = time.perf_counter() - start
        if process.returncode != 0:
            raise SystemExit(f"conversion failed with exit code {process.returncode}")
        seconds = float(process.stdout.read())
    return seconds, process_seconds, sampler.peak_rss / 2**20


def reference_convert(paths: list[str], size: int) -> float:
    """The reference notebook's loop: one process, pixel_array / 255, cv2.resize, float16, np.save per file."""
    import cv2
    import pydicom

    with tempfile.TemporaryDirectory(dir=CACHE) as out:
        start = time.perf_counter()
        for i, path in enumerate(paths):
            array = pydicom.dcmread(path).pixel_array / 255
            np.save(f"{out}/{i}.npy", cv2.resize(array, (size, size)).astype(np.float16))
        return time.perf_counter() - start


def _decode_only(args: tuple[list[str], int]) -> int:
    """Read each file and decode its pixels (the JPEG frame, DCT-downscaled as far as the output size allows): nothing else."""
    from PIL import Image
    from pydicom.encaps import generate_frames
    import pydicom

    paths, size = args
    for path in paths:
        ds = pydicom.dcmread(path)
        jpeg = Image.open(io.BytesIO(next(generate_frames(ds.PixelData, number_of_frames=1))))
        jpeg.draft("L", (size + 1, size + 1))  # the smallest DCT scale still larger than the output
        jpeg.load()
    return len(paths)


def decode_bound(paths: list[str], size: int) -> float:
    workers = os.cpu_count() or 1
    chunks = [(paths[i : i + 16], size) for i in range(0, len(paths), 16)]
    start = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        sum(pool.imap_unordered(_decode_only, chunks))
    return time.perf_counter() - start


# --- training and inference -------------------------------------------------------------------


def arrays(n: int, size: int) -> Path:
    """A processed-like train array of phantom-free random images (the data path's cost does not depend on content)."""
    path = CACHE / f"train_{n}_{size}.npy"
    if not path.exists():
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
        array[:] = np.random.default_rng(0).integers(0, 256, size=array.shape, dtype=np.uint8)
        array.flush()
    return path


class _StepTimer:
    """Lightning callback: wall time of the steady-state training steps (the first `warmup` are skipped)."""

    def __init__(self, warmup: int):
        import pytorch_lightning as pl

        outer = self

        class Callback(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if batch_idx == warmup - 1:
                    outer.start = time.perf_counter()
                outer.end, outer.steps = time.perf_counter(), batch_idx + 1 - warmup

        self.callback = Callback()


def _timed_fit(module, loader, batch: int, steps: int, warmup: int, precision: str) -> float:
    """Images/s of a stage's Lightning loop over ``steps`` batches after ``warmup`` (no validation, no files)."""
    import pytorch_lightning as pl

    timer = _StepTimer(warmup)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=steps + warmup, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer.callback], accelerator="auto", devices=1, deterministic=True, precision=precision,
    )
    trainer.fit(module, loader)
    return timer.steps * batch / (timer.end - timer.start)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _bare_rate(net: torch.nn.Module, loss_of, optimizer_of, size: int, batch: int, steps: int, warmup: int,
               precision: str) -> float:
    """Images/s of ``net`` trained on one batch already on :func:`_device`: ``loss_of(net, images)`` each step,
    the optimizer ``optimizer_of(parameters)``; channels_last on a GPU, as the stages."""
    device = _device()
    net = net.to(device)
    images = torch.randn(batch, 1, size, size, device=device)
    if device == "cuda":  # as the stages do on a GPU
        net, images = net.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    optimizer = optimizer_of(net.parameters())
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for step in range(steps + warmup):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad()
        with autocast:
            loss = loss_of(net, images)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def stage_train_rate(array_path: Path, batch: int, steps: int, warmup: int = 2, arch: str = "resnet18",
                     precision: str = "32-true") -> float:
    """The train stage's loop: Lightning, memory-mapped dataset, augmentation where train puts it
    (``augment_on: auto``: per sample in the DataLoader on a CPU, whole batches on a GPU), DataLoader
    workers as ``num_workers: auto`` gives them."""
    from pneumonia.core.scaling import augment_on_device, loader_workers

    params = replace(load_params(ROOT / "params.yaml").train, arch=arch, num_workers="auto")
    on_device = augment_on_device(params)
    labels = np.arange(np.load(array_path, mmap_mode="r").shape[0]) % 2
    dataset = XrayDataset(array_path, labels, 0.4, 0.3, augment=not on_device)
    loader = make_loader(dataset, batch, loader_workers(params, on_device), shuffle=True)
    model = PneumoniaClassifier(image_size=dataset.image_size, mean=0.4, std=0.3, arch=arch,
                                augment_on_device=on_device)
    return _timed_fit(model, loader, batch, steps, warmup, precision)


def bare_train_rate(size: int, batch: int, steps: int, warmup: int = 2, arch: str = "resnet18",
                    precision: str = "32-true") -> float:
    """The same model, batch size, image size and optimizer over tensors already on the device."""
    labels = (torch.arange(batch, device=_device()) % 2).float().unsqueeze(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    return _bare_rate(build_network(arch), lambda net, images: loss_fn(net(images), labels),
                      lambda parameters: torch.optim.Adam(parameters, lr=1e-4), size, batch, steps, warmup, precision)


def _rates_by_architecture(stage: str, stage_rate, bare_rate, size: int, batch: int, steps: int,
                           repeats: int) -> dict[str, dict[str, float]]:
    """Train images/s of every architecture, the stage's loop against the bare loop, paired per repeat.

    On a GPU the stage runs in bf16-mixed with the batch augmentation on the device; on a CPU in 32-bit
    with the per-sample augmentation (what ``augment_on: auto`` picks on each).
    """
    from pneumonia.core.architectures import ARCHITECTURES

    precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    array = arrays(batch * (steps + 2), size)
    table = {}
    for arch in ARCHITECTURES:
        staged, bare = [], []
        for _ in range(repeats):
            staged.append(stage_rate(array, batch, steps, arch=arch, precision=precision))
            bare.append(bare_rate(size, batch, steps, arch=arch, precision=precision))
        table[arch] = {"images_per_s": round(statistics.median(staged), 1),
                       "fraction_of_bare": round(statistics.median(s / b for s, b in zip(staged, bare)), 3)}
        print(f"{stage} {arch:<16} {table[arch]['images_per_s']:>8} images/s  "
              f"{table[arch]['fraction_of_bare']:.3f} of bare", flush=True)
    return table


def architecture_rates(size: int, batch: int, steps: int, repeats: int) -> dict[str, dict[str, float]]:
    """The classifier's train images/s per ``train.arch`` (:func:`_rates_by_architecture`)."""
    return _rates_by_architecture("train", stage_train_rate, bare_train_rate, size, batch, steps, repeats)


def _box_rows(n: int, size: int, split: str = "train") -> list:
    """Manifest rows of ``n`` images of ``size`` pixels, one box each (the loader's cost hardly depends on the box)."""
    from pneumonia.data.manifest import ManifestRow

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        x, y = rng.integers(0, size // 2, size=2)
        rows.append(ManifestRow(patient_id=f"{split}{i}", split=split, row=i, label=1,
                                boxes=((float(x), float(y), size / 4, size / 3),), detailed_class="", view="PA",
                                sex="F", age=50, rows=size, columns=size, pixel_spacing_mm=None))
    return rows


def stage_detect_rate(array_path: Path, batch: int, steps: int, warmup: int = 2, arch: str = "resnet18",
                      precision: str = "32-true") -> float:
    """The detect stage's training loop: Lightning, the memory-mapped dataset, the box-aware augmentation where
    ``augment_on: auto`` puts it (per sample in the loader on a CPU, whole batches on a GPU), the targets."""
    from torch.utils.data import DataLoader

    from pneumonia.detection.data import DetectionDataset, collate_boxes
    from pneumonia.detection.thresholds import ThresholdRule
    from pneumonia.detection.detect import DetectorModule
    from pneumonia.core.scaling import augment_on_device, loader_workers

    size = np.load(array_path, mmap_mode="r").shape[-1]
    params = replace(load_params(ROOT / "params.yaml").detect, arch=arch, image_size=size, num_workers="auto",
                     precision=precision)
    on_device = params.augment and augment_on_device(params)
    rows = _box_rows(np.load(array_path, mmap_mode="r").shape[0], size)
    dataset = DetectionDataset(array_path, rows, size, 0.4, 0.3, augment=not on_device, encode=not on_device)
    loader = DataLoader(dataset, batch, shuffle=True, num_workers=loader_workers(params, on_device),
                        collate_fn=collate_boxes if on_device else None)
    module = DetectorModule(params, [], ThresholdRule(params.score_thresholds), on_device)
    return _timed_fit(module, loader, batch, steps, warmup, precision)


def bare_detect_rate(size: int, batch: int, steps: int, warmup: int = 2, arch: str = "resnet18",
                     precision: str = "32-true") -> float:
    """The same detector, loss, batch and AdamW over images and targets already on the device."""
    from pneumonia.detection.network import build_detector
    from pneumonia.core.boxes import boxes_to_input
    from pneumonia.detection.targets import detection_loss, encode_targets

    detect = load_params(ROOT / "params.yaml").detect
    encoded = [encode_targets(boxes_to_input(r.boxes, r.rows, r.columns, size), size) for r in _box_rows(batch, size)]
    targets = [torch.stack(t).to(_device()) for t in zip(*encoded)]
    labels = torch.ones(batch, device=_device())
    return _bare_rate(build_detector(arch, detect.width, detect.neck),
                      lambda net, images: detection_loss(net(images), *targets, labels)["loss"],
                      lambda parameters: torch.optim.AdamW(parameters, lr=detect.lr, weight_decay=detect.weight_decay),
                      size, batch, steps, warmup, precision)


def detector_architecture_rates(size: int, batch: int, steps: int, repeats: int) -> dict[str, dict[str, float]]:
    """The detector's train images/s per backbone, ``detect.arch`` (:func:`_rates_by_architecture`)."""
    return _rates_by_architecture("detect", stage_detect_rate, bare_detect_rate, size, batch, steps, repeats)


def stage_infer_rate(array_path: Path, checkpoint: Path, batch: int) -> float:
    model = load_classifier(checkpoint)
    images = np.load(array_path, mmap_mode="r")
    predict_probabilities(model, images[:batch], batch)  # warm-up
    start = time.perf_counter()
    predict_probabilities(model, images, batch)
    return len(images) / (time.perf_counter() - start)


@torch.inference_mode()
def bare_infer_rate(n: int, size: int, batch: int) -> float:
    net = build_network().eval()
    images = torch.randn(n, 1, size, size)
    net(images[:batch])
    start = time.perf_counter()
    for i in range(0, n, batch):
        net(images[i : i + batch]).sigmoid()
    return n / (time.perf_counter() - start)


def save_checkpoint(path: Path, size: int) -> Path:
    """A model file in the train stage's format, with random weights."""
    from pneumonia.classification.classifier import classifier_header
    from pneumonia.core.model_file import save_model

    model = PneumoniaClassifier(image_size=size, mean=0.4, std=0.3)
    save_model(path, "classifier", model.network.state_dict(), classifier_header(model.hparams))
    return path


# --- predict with each backend ----------------------------------------------------------------


def save_predictor_file(folder: Path) -> Path:
    """A predictor file of the default params' shapes (classifier and detector at their image sizes and
    widths), random weights: the networks' cost does not depend on what they learned."""
    from pneumonia.prediction.decision import Decision
    from pneumonia.detection.detector import LoadedDetector, save_detector
    from pneumonia.detection.network import build_detector
    from pneumonia.core.model_file import read_model
    from pneumonia.prediction.ood import OodGuard
    from pneumonia.prediction.predictor import save_predictor

    params = load_params(ROOT / "params.yaml")
    classifier = save_checkpoint(folder / "classifier.safetensors", params.dicom_to_npy.image_size)
    detect = params.detect
    network = build_detector(detect.arch, detect.width, detect.neck)
    save_detector(folder / "detector.safetensors", network, LoadedDetector(
        network, detect.arch, detect.width, detect.image_size, mean=0.4, std=0.3, image_threshold=0.5,
        box_threshold=0.5, nms_iou=detect.nms_iou, max_boxes=detect.max_boxes, neck=detect.neck))
    path = folder / "pneumonia.safetensors"
    save_predictor(path, read_model(classifier, "classifier", ""), read_model(folder / "detector.safetensors",
                   "detector", ""), Decision("stacked", "platt", (0.5, 0.5), 0.0, None, 0.5), 0.5,
                   OodGuard(np.zeros(512), np.eye(512), 1e9, 0.99), {"source": "synthetic", "patients": {}})
    return path


def predict_backend_rates(files: list[str], batch: int, repeats: int) -> dict:
    """`pneumonia predict` (predict.run: read, both networks, answers, CSV) on the same DICOMs with each backend,
    images/s; the backends alternate which goes first, each repeat's ONNX Runtime / PyTorch ratio is paired,
    and the medians are kept. The same for the networks alone (the backends' forward on the images read once)."""
    from pneumonia.prediction import predict
    from pneumonia.data.dicom.read import read_dicom_sizes
    from pneumonia.prediction.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        model = save_predictor_file(Path(tmp))
        export_onnx(model, Path(tmp) / "onnx")
        where = {"torch": model, "onnxruntime": Path(tmp) / "onnx"}
        forwards = {backend: predict.load_backend(path, backend) for backend, path in where.items()}
        size = forwards["torch"][0].image_size
        read = [read_dicom_sizes(path, (size,)) for path in files]
        images, sizes = np.stack([r[0][0] for r in read]), [(r[1].rows, r[1].columns) for r in read]
        rates: dict[str, dict[str, list[float]]] = {part: {b: [] for b in where} for part in ("predict", "forward")}
        for repeat in range(repeats + 1):  # the first round warms both up and is not kept
            for backend in (list(where) if repeat % 2 else list(where)[::-1]):
                start = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
                    predict.run(files, where[backend], Path(tmp) / "p.csv", batch_size=batch, backend=backend)
                predict_rate = len(files) / (time.perf_counter() - start)
                start = time.perf_counter()
                forwards[backend][1](images, sizes, batch)
                if repeat:
                    rates["predict"][backend].append(predict_rate)
                    rates["forward"][backend].append(len(files) / (time.perf_counter() - start))
    out = {}
    for part, by_backend in rates.items():
        torch_rates, onnx_rates = by_backend["torch"], by_backend["onnxruntime"]
        ratio = statistics.median(o / t for o, t in zip(onnx_rates, torch_rates))
        out |= {f"{part}_torch_images_per_s": round(statistics.median(torch_rates), 1),
                f"{part}_onnxruntime_images_per_s": round(statistics.median(onnx_rates), 1),
                f"{part}_onnxruntime_vs_torch": round(ratio, 2)}
        print(f"{part:<8} torch {out[f'{part}_torch_images_per_s']:>7} images/s  onnxruntime "
              f"{out[f'{part}_onnxruntime_images_per_s']:>7} images/s  ratio {out[f'{part}_onnxruntime_vs_torch']}",
              flush=True)
    return out


def backend_figures(images: int, repeats: int, machine: str) -> dict:
    batch = 32  # predict's default
    return predict_backend_rates(dicom_paths(dataset(images)), batch, repeats) | {"predict_backend_settings": {
        "images": images, "dicom_size": 1024, "batch_size": batch, "repeats": repeats, "machine": machine}}


# --- dvc ----------------------------------------------------------------------------------------


def repro_noop_seconds(repeats: int = 3) -> float:
    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_repo import make_repo, run

    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        repo = make_repo(Path(tmp) / "repo")
        run(["dvc", "repro"], repo)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = run(["dvc", "repro"], repo).stdout
            times.append(time.perf_counter() - start)
            assert "Running stage" not in out, out
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="DICOMs for the conversion figures")
    parser.add_argument("--large", type=int, default=10000, help="DICOMs for the large-dataset memory figure")
    parser.add_argument("--size", type=int, default=224, help="conversion image size (the reference: 224)")
    parser.add_argument("--train-size", type=int, default=128, help="image size for the train/infer figures (the default params)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch-size", type=int, default=224, help="image size for the per-architecture figures")
    parser.add_argument("--arch-batch", type=int, default=16, help="batch size for the per-architecture figures")
    parser.add_argument("--arch-steps", type=int, default=3, help="timed batches per architecture and repeat")
    parser.add_argument("--only-architectures", action="store_true",
                        help="measure only the per-architecture figures, keep the rest of results.json")
    parser.add_argument("--detect-size", type=int, default=256, help="image size for the per-backbone detector figures")
    parser.add_argument("--only-detectors", action="store_true",
                        help="measure only the per-backbone detector figures, keep the rest of results.json")
    parser.add_argument("--predict-images", type=int, default=64, help="phantom DICOMs (1024 px) predict reads")
    parser.add_argument("--only-predict-backends", action="store_true",
                        help="measure only predict with each backend, keep the rest of results.json")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {device}"
    by_detector = {"detect_by_architecture": detector_architecture_rates(args.detect_size, args.arch_batch,
                                                                          args.arch_steps, args.repeats),
                   "detect_architecture_settings": {"image_size": args.detect_size, "batch_size": args.arch_batch,
                                                    "timed_batches": args.arch_steps, "repeats": args.repeats,
                                                    "machine": machine}} if not args.only_predict_backends else {}
    if args.only_detectors:
        out.write_text(json.dumps(json.loads(out.read_text()) | by_detector, indent=2) + "\n")
        return
    if args.only_predict_backends:
        results = json.loads(out.read_text()) | backend_figures(args.predict_images, args.repeats, machine)
        out.write_text(json.dumps(results, indent=2) + "\n")
        return
    by_arch = {"train_by_architecture": architecture_rates(args.arch_size, args.arch_batch, args.arch_steps,
                                                           args.repeats),
               "architecture_settings": {"image_size": args.arch_size, "batch_size": args.arch_batch,
                                         "timed_batches": args.arch_steps, "repeats": args.repeats,
                                         "machine": machine}}
    if args.only_architectures:
        results = json.loads(out.read_text()) | by_arch | by_detector
        out.write_text(json.dumps(results, indent=2) + "\n")
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    small, large = dataset(args.small), dataset(args.large)
    paths = dicom_paths(small)
    stage_s, process_s, reference_s, bound_s, rss_small = [], [], [], [], []
    for _ in range(args.repeats):
        seconds, process_seconds, rss = run_convert_stage(small, args.size)
        stage_s.append(seconds)
        process_s.append(process_seconds)
        rss_small.append(rss)
        reference_s.append(reference_convert(paths, args.size))
        bound_s.append(decode_bound(paths, args.size))
    _, _, rss_large = run_convert_stage(large, args.size)
    convert_rate = len(paths) / statistics.median(stage_s)

    batch, steps = 64, 8
    train_array = arrays(batch * (steps + 2), args.train_size)
    stage_train, bare_train = [], []
    for _ in range(args.repeats):
        stage_train.append(stage_train_rate(train_array, batch, steps))
        bare_train.append(bare_train_rate(args.train_size, batch, steps))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "model.safetensors", args.train_size)
        infer_array = arrays(1024, args.train_size)
        stage_infer, bare_infer = [], []
        for _ in range(args.repeats):
            stage_infer.append(stage_infer_rate(infer_array, checkpoint, 128))
            bare_infer.append(bare_infer_rate(1024, args.train_size, 128))

    results = {
        "convert_images_per_s": round(convert_rate, 1),
        "convert_speedup_vs_reference": round(statistics.median(r / s for r, s in zip(reference_s, stage_s)), 2),
        "convert_fraction_of_decode_bound": round(statistics.median(b / s for b, s in zip(bound_s, stage_s)), 3),
        # The ceiling for any converter here: the pure decode on all cores against the reference loop.
        "convert_decode_bound_speedup_vs_reference": round(statistics.median(r / b for r, b in zip(reference_s, bound_s)), 2),
        "convert_process_images_per_s": round(len(paths) / statistics.median(process_s), 1),
        "convert_peak_rss_mb_small": round(statistics.median(rss_small), 1),
        "convert_peak_rss_mb_large": round(rss_large, 1),
        "train_images_per_s": round(statistics.median(stage_train), 1),
        "train_fraction_of_raw": round(statistics.median(s / b for s, b in zip(stage_train, bare_train)), 3),
        "infer_images_per_s": round(statistics.median(stage_infer), 1),
        "infer_fraction_of_raw": round(statistics.median(s / b for s, b in zip(stage_infer, bare_infer)), 3),
        "repro_noop_s": round(repro_noop_seconds(), 2),
        **backend_figures(args.predict_images, args.repeats, machine),
        "machine": machine,
        "settings": {"convert_images": args.small, "convert_images_large": args.large, "convert_size": args.size,
                     "train_size": args.train_size, "batch_size": batch, "repeats": args.repeats},
    } | by_arch | by_detector
    out.write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for key, value in results.items():
        if key not in ("settings", "architecture_settings", "train_by_architecture", "predict_backend_settings",
                       "detect_by_architecture", "detect_architecture_settings"):
            print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
