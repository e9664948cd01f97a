"""The ``napari-kmeanz`` command, run as a subprocess on files the tests write first."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage import data, io

from napari_kmeanz import kmeans

# the installed console script, beside the interpreter running the tests
COMMAND = str(Path(sys.executable).with_name("napari-kmeanz"))


def run(*args, cwd=None):
    return subprocess.run(
        [COMMAND, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    astronaut = data.astronaut()
    Image.fromarray(astronaut).save(folder / "photo.jpg", quality=95)
    rgba = np.dstack([data.coffee(), np.full(data.coffee().shape[:2], 255, np.uint8)])
    rgba[:50, :, 3] = 0
    io.imsave(folder / "rgba.png", rgba)
    palette = Image.fromarray(data.chelsea()).convert("P", palette=Image.ADAPTIVE, colors=24)
    palette.save(folder / "palette.png")
    stack = (np.stack([data.camera()[::4, ::4]] * 3).astype(np.uint16) * 257)[:, :, :]
    stack[1] = stack[1][::-1]
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    return folder


def test_the_command_runs_as_a_module_too(tmp_path):
    """``python -m napari_kmeanz`` is the console script: its exit codes, its one-line errors."""
    bad = subprocess.run([sys.executable, "-m", "napari_kmeanz", "astronaut", "-k", "0"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "-k" in bad.stderr and len(bad.stderr.splitlines()) == 1
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "napari_kmeanz", "camera", "-k", "3", "-o",
                           str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "camera_labels.png").exists()


def read_report(outdir, stem):
    return json.loads((outdir / f"{stem}_report.json").read_text())


def test_jpeg_outputs_match_the_python_api(files, tmp_path):
    out = tmp_path / "out"
    done = run(files / "photo.jpg", "-k", 12, "-r", 8, "-o", out, "-s", 1, "-g", "--seed", 3)
    assert done.returncode == 0, done.stderr
    assert "[" in done.stderr and "8" in done.stderr  # the progress bar, on stderr
    image = io.imread(files / "photo.jpg")
    expected = kmeans(image, 12, spatial_weight=1.0, max_iter=8, random_state=3)

    labels = io.imread(out / "photo_labels.png")
    assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
    np.testing.assert_array_equal(labels, expected.labels)
    recoloured = io.imread(out / "photo_recoloured.png")
    np.testing.assert_array_equal(recoloured, expected.recolor())
    with Image.open(out / "photo_palette.png") as palette:
        assert palette.mode == "P"
        np.testing.assert_array_equal(np.asarray(palette), expected.labels)
    rounds = sorted(out.glob("photo_round_*.png"))
    assert len(rounds) == expected.n_iter
    np.testing.assert_array_equal(io.imread(rounds[0]).shape, image.shape)

    report = read_report(out, "photo")
    assert report["rounds_run"] == expected.n_iter
    assert report["inertia_history"] == pytest.approx(expected.inertia_history.tolist())
    assert report["unique_colors_after"] == 12 < report["unique_colors_before"]
    compression = report["compression"]
    assert compression["raw_bytes"] == 512 * 512 * 3
    assert compression["index_bits"] == 4 and compression["ratio"] > 5
    for name, size in report["files"].items():
        assert (out / name).stat().st_size == size
    assert not list(out.glob(".*partial*"))


def test_rgba_png_keeps_transparency(files, tmp_path):
    done = run(files / "rgba.png", "-k", 5, "-o", tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr
    labels = io.imread(tmp_path / "rgba_labels.png")
    assert np.all(labels[:50] == 0) and np.all(labels[50:] > 0)
    recoloured = io.imread(tmp_path / "rgba_recoloured.png")
    assert recoloured.shape[-1] == 4 and np.all(recoloured[:50, :, 3] == 0)
    assert read_report(tmp_path, "rgba")["compression"]["index_bits"] == 3  # 5 ids and 0


def test_palette_png_input(files, tmp_path):
    done = run(files / "palette.png", "-k", 6, "-o", tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr
    report = read_report(tmp_path, "palette")
    assert report["shape"][-1] == 3 and report["unique_colors_before"] <= 24
    assert io.imread(tmp_path / "palette_recoloured.png").shape == tuple(report["shape"])


def test_grey_with_alpha_cmyk_and_transparent_palette_pictures(tmp_path):
    """Picture modes other than grey, RGB and RGBA are read as what they show: grey with
    alpha (it was read as a stack of 2 slices), CMYK (its K was taken for alpha, leaving no
    pixel to cluster) and a palette with a transparent entry."""
    camera = data.camera()
    alpha = np.full(camera.shape, 255, np.uint8)
    alpha[:, :100] = 0
    Image.fromarray(np.dstack([camera, alpha]), "LA").save(tmp_path / "grey.png")
    Image.fromarray(data.astronaut()).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    palette = Image.fromarray(data.chelsea()).convert("P", palette=Image.ADAPTIVE, colors=8)
    first = np.asarray(palette)[0, 0]
    palette.save(tmp_path / "icon.png", transparency=int(first))
    for name, stem in [("grey.png", "grey"), ("print.jpg", "print"), ("icon.png", "icon")]:
        done = run(tmp_path / name, "-k", 3, "-o", tmp_path / stem, "--quiet")
        assert done.returncode == 0, done.stderr
        labels = io.imread(tmp_path / stem / f"{stem}_labels.png")
        assert labels.shape == data.camera().shape if stem == "grey" else labels.ndim == 2
        assert set(np.unique(labels)) - {0} == {1, 2, 3}
    grey = io.imread(tmp_path / "grey" / "grey_labels.png")
    assert np.all(grey[:, :100] == 0) and np.all(grey[:, 100:] > 0)
    expected = kmeans(camera[:, 100:], 3, max_iter=5, random_state=0).labels
    np.testing.assert_array_equal(grey[:, 100:], expected)  # clustered as the grey values
    colours = read_report(tmp_path / "print", "print")
    assert colours["shape"] == [512, 512, 3]
    icon = io.imread(tmp_path / "icon" / "icon_labels.png")
    np.testing.assert_array_equal(icon == 0, np.asarray(palette) == first)


def test_a_multichannel_tiff_clusters_its_channels(tmp_path):
    """A (C, Y, X) TIFF whose axes are named (ImageJ's) is clustered over its 2 channels
    (it was a volume of 2 slices); one without names takes --channel-axis."""
    camera = data.camera()[::2, ::2]
    two = np.stack([camera, 255 - camera]).astype(np.uint16) * 200
    tifffile.imwrite(tmp_path / "named.tif", two, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "plain.tif", two)
    expected = kmeans(np.moveaxis(two, 0, -1), 3, channel_axis=-1, max_iter=5, random_state=0)
    for name, options in [("named", []), ("plain", ["--channel-axis", 0])]:
        done = run(tmp_path / f"{name}.tif", "-k", 3, *options, "-o", tmp_path / name, "--quiet")
        assert done.returncode == 0, done.stderr
        labels = io.imread(tmp_path / name / f"{name}_labels.png")
        np.testing.assert_array_equal(labels, expected.labels)
        recoloured = tifffile.imread(tmp_path / name / f"{name}_recoloured.tif")
        assert recoloured.shape == two.shape  # in the file's own layout, channels first
    report = read_report(tmp_path / "named", "named")
    assert report["parameters"]["channel_axis"] == 0 and len(report["colors"][0]) == 2
    plain = run(tmp_path / "plain.tif", "-k", 3, "-o", tmp_path / "slices", "--quiet")
    assert io.imread(tmp_path / "slices" / "plain_labels.tif").shape == two.shape  # 2 slices
    both = run(tmp_path / "named.tif", tmp_path / "plain.tif", "-k", 3, "--channel-axis", 0,
               "-o", tmp_path / "both", "--quiet")  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert tifffile.imread(tmp_path / "both" / "plain_recoloured.tif").shape == two.shape
    bad = run(tmp_path / "plain.tif", "--channel-axis", 5, "-o", tmp_path / "bad", "--quiet")
    assert bad.returncode == 2 and "channel_axis=5 is out of range" in bad.stderr
    assert plain.returncode == 0


def test_a_planar_rgb_tiff_clusters_its_colours(tmp_path):
    """A TIFF of planar RGB samples ((3, Y, X), as scanners write) is clustered by colour (it
    was a volume of 3 grey slices); planar RGBA keeps its extra sample as alpha; samples
    last that are not RGB(A) are channels too."""
    photo = np.moveaxis(data.astronaut()[::4, ::4], -1, 0)
    opaque = np.where(np.arange(128) < 64, 0, 255).astype(np.uint8)
    rgba = np.concatenate([photo, np.broadcast_to(opaque, (1, 128, 128))])
    tifffile.imwrite(tmp_path / "rgb.tif", photo, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", planarconfig="separate",
                     extrasamples=["unassalpha"])  # fmt: skip
    for name, image, alpha in [("rgb", photo, False), ("rgba", rgba, True)]:
        done = run(tmp_path / f"{name}.tif", "-k", 3, "-g", "-o", tmp_path / name, "--quiet")
        assert done.returncode == 0, done.stderr
        expected = kmeans(image, 3, channel_axis=0, alpha=alpha, max_iter=5, random_state=0)
        labels = io.imread(tmp_path / name / f"{name}_labels.png")
        np.testing.assert_array_equal(labels, expected.labels)
        report = read_report(tmp_path / name, name)
        assert report["parameters"]["channel_axis"] == 0 and len(report["colors"][0]) == 3
        rounds = sorted((tmp_path / name).glob(f"{name}_round_*"))  # in the file's layout
        assert rounds and all(tifffile.imread(r).shape == image.shape for r in rounds)
    assert (labels[:, :64] == 0).all() and (labels[:, 64:] > 0).all()  # alpha 0: unclustered
    slices = run(tmp_path / "rgb.tif", "--channel-axis", "none", "-o", tmp_path / "z", "--quiet")
    assert slices.returncode == 0, slices.stderr  # as asked: a stack of 3 grey slices
    assert tifffile.imread(tmp_path / "z" / "rgb_labels.tif").shape == photo.shape
    # a model fitted on the photo, channels last, labels the planar file (and back)
    io.imsave(tmp_path / "photo.png", np.moveaxis(photo, 0, -1))
    fit = run(tmp_path / "photo.png", "-k", 3, "--save-model", tmp_path / "m.json",
              "-o", tmp_path / "fit", "--quiet")  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    both = run(tmp_path / "photo.png", tmp_path / "rgb.tif", "--model", tmp_path / "m.json",
               "-o", tmp_path / "both", "--quiet")  # fmt: skip
    assert both.returncode == 0, both.stderr
    fitted = io.imread(tmp_path / "fit" / "photo_labels.png")
    for stem in ("photo", "rgb"):
        np.testing.assert_array_equal(io.imread(tmp_path / "both" / f"{stem}_labels.png"), fitted)
    assert tifffile.imread(tmp_path / "both" / "rgb_recoloured.tif").shape == photo.shape
    # one model fitted on both: the planar file's channels go where the first file's are
    for order in (["rgb.tif", "photo.png"], ["photo.png", "rgb.tif"]):
        out = tmp_path / f"pooled-{order[0]}"
        pooled = run(*(tmp_path / n for n in order), "-k", 3, "-o", out, "--quiet")
        assert pooled.returncode == 0, pooled.stderr
        labels = [io.imread(out / f"{s}_labels.png") for s in ("rgb", "photo")]
        np.testing.assert_array_equal(*labels)
    # samples last but not RGB(A): grey and alpha, or 5 channels (they were 2 or 5 slices)
    grey_alpha = np.moveaxis(rgba[[0, 3]], 0, -1)
    five = np.moveaxis(np.concatenate([photo, photo[:2] // 2]), 0, -1)
    contiguous = {"photometric": "minisblack", "planarconfig": "contig"}
    tifffile.imwrite(tmp_path / "la.tif", grey_alpha, extrasamples=["unassalpha"], **contiguous)
    tifffile.imwrite(tmp_path / "five.tif", five, **contiguous)
    for name, image, alpha in [("la", grey_alpha, True), ("five", five, False)]:
        done = run(tmp_path / f"{name}.tif", "-k", 3, "-o", tmp_path / name, "--quiet")
        assert done.returncode == 0, done.stderr
        expected = kmeans(image, 3, channel_axis=-1, alpha=alpha, max_iter=5, random_state=0)
        np.testing.assert_array_equal(io.imread(tmp_path / name / f"{name}_labels.png"),
                                      expected.labels)  # fmt: skip
        assert len(read_report(tmp_path / name, name)["colors"][0]) == 1 + 4 * (not alpha)


def test_16_bit_tiff_stack(files, tmp_path):
    done = run(files / "stack.tif", "-k", 4, "-s", 0.5, "-o", tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr
    stack = tifffile.imread(files / "stack.tif")
    labels = tifffile.imread(tmp_path / "stack_labels.tif")
    recoloured = tifffile.imread(tmp_path / "stack_recoloured.tif")
    assert labels.shape == stack.shape == recoloured.shape
    assert recoloured.dtype == np.uint16
    expected = kmeans(stack, 4, spatial_weight=0.5, max_iter=5, random_state=0)
    np.testing.assert_array_equal(labels, expected.labels)
    assert not (tmp_path / "stack_palette.png").exists()  # a stack has no 2-D palette image


def test_lab_colour_space_option(tmp_path):
    done = run("coffee", "-k", 5, "--colour-space", "lab", "-o", tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr
    expected = kmeans(data.coffee(), 5, color_space="lab", max_iter=5, random_state=0)
    np.testing.assert_array_equal(io.imread(tmp_path / "coffee_labels.png"), expected.labels)
    assert read_report(tmp_path, "coffee")["parameters"]["color_space"] == "lab"


def test_sigma_and_features_options(tmp_path):
    done = run(
        "camera", "-k", 3, "--sigma", 2, "--features", "gaussian,std", "-o", tmp_path, "--quiet"
    )
    assert done.returncode == 0, done.stderr
    expected = kmeans(
        data.camera(), 3, sigma=2, features=["gaussian", "std"], max_iter=5, random_state=0
    )
    np.testing.assert_array_equal(io.imread(tmp_path / "camera_labels.png"), expected.labels)
    parameters = read_report(tmp_path, "camera")["parameters"]
    assert parameters["sigma"] == 2 and parameters["features"] == ["gaussian", "std"]


def test_save_a_model_and_apply_it_to_another_image(tmp_path):
    model_file = tmp_path / "models" / "v1" / "astronaut.json"  # its folders are made
    done = run("astronaut", "-k", 6, "-o", tmp_path / "fit", "--save-model", model_file, "--quiet")
    assert done.returncode == 0, done.stderr
    applied = run("coffee", "--model", model_file, "-o", tmp_path / "applied")
    assert applied.returncode == 0, applied.stderr
    assert "labelled by the model" in applied.stderr and "k-means k=" not in applied.stderr
    from napari_kmeanz import load, predict

    expected = predict(data.coffee(), load(model_file))
    np.testing.assert_array_equal(io.imread(tmp_path / "applied" / "coffee_labels.png"), expected)
    report = read_report(tmp_path / "applied", "coffee")
    assert report["model"] == str(model_file)
    fit = read_report(tmp_path / "fit", "astronaut")
    assert report["model_fit"]["inertia"] == fit["inertia"]  # the model's, not coffee's
    assert "inertia" not in report and "rounds_run" not in report
    assert report["pixels_per_cluster"] == np.bincount(expected.ravel())[1:].tolist()


def test_several_images_one_model_and_a_table(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    io.imsave(folder / "a.png", data.astronaut())
    io.imsave(folder / "b.png", data.coffee())
    (folder / "broken.png").write_bytes(b"not an image")
    io.imsave(folder / "grey.png", data.camera())  # not the others' channels
    model_file = tmp_path / "models" / "model.json"  # its folder made
    done = run(folder, "-k", 5, "-o", tmp_path / "out", "--save-model", model_file, "--quiet")
    assert done.returncode == 1  # two files skipped, the others done
    skipped = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 2 and "broken.png" in skipped[0] and "grey.png" in skipped[1]
    from napari_kmeanz import load, predict

    model = load(model_file)
    for stem, image in (("a", data.astronaut()), ("b", data.coffee())):
        labels = io.imread(tmp_path / "out" / f"{stem}_labels.png")
        np.testing.assert_array_equal(labels, predict(image, model))
    rows = (tmp_path / "out" / "clusters.csv").read_text().splitlines()
    assert rows[0] == "file,cluster,count,fraction" and len(rows) == 1 + 2 * 5
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert [Path(name).name for name in report["images"]] == ["a.png", "b.png"]
    # the model applied to a quoted pattern, without fitting: the same labels
    again = run(f"{folder}/[ab].png", "--model", model_file, "-o", tmp_path / "again", "--quiet")
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(
        io.imread(tmp_path / "again" / "a_labels.png"),
        io.imread(tmp_path / "out" / "a_labels.png"),
    )


def test_sweep_writes_inertia_elbow_and_animation(tmp_path):
    done = run("coffee", "--sweep", "2:6", "-r", 10, "-o", tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "coffee_sweep_report.json").read_text())
    assert report["k"] == [2, 3, 4, 5, 6]
    assert np.all(np.diff(report["inertia"]) < 0)
    assert report["suggested_k"] in report["k"]
    elbow = io.imread(tmp_path / "coffee_elbow.png")
    assert elbow.ndim == 3 and elbow.std() > 5
    with Image.open(tmp_path / "coffee_sweep.gif") as gif:
        assert gif.n_frames == 5


def test_a_sweep_past_the_distinct_values_ends_there_and_keeps_its_results(tmp_path):
    """A grey picture of 6 distinct values swept over k = 4..9: k = 4..6 are written, the
    sweep says where and why it stopped (it failed at k = 7, writing nothing)."""
    steps = (data.camera() // 43).astype(np.uint8)  # values 0..5
    io.imsave(tmp_path / "steps.png", steps, check_contrast=False)
    done = run(tmp_path / "steps.png", "--sweep", "4:9", "-o", tmp_path / "out", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "the sweep stopped at k=6: n_clusters=7 is larger than the number of distinct" in (
        done.stderr
    )
    report = json.loads((tmp_path / "out" / "steps_sweep_report.json").read_text())
    assert report["k"] == [4, 5, 6] and report["stopped"].startswith("stopped at k=6")
    with Image.open(tmp_path / "out" / "steps_sweep.gif") as gif:
        assert gif.n_frames == 3
    failed = run(tmp_path / "steps.png", "--sweep", "7:9", "-o", tmp_path / "none", "--quiet")
    assert failed.returncode == 2 and "n_clusters=7 is larger" in failed.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png"], "no such image file or bundled sample: 'missing.png'"),
        (["not_a_sample"], "no such image file or bundled sample: 'not_a_sample'"),
        (["BROKEN"], "cannot read image"),
        (
            ["astronaut", "-k", "0"],
            "argument -k/--clusters: expected a whole number >= 1, got '0'",
        ),
        (["astronaut", "-r", "-2"], "argument -r/--rounds: expected a whole number >= 1"),
        (["astronaut", "-s", "-1"], "argument -s/--spatial: expected a number >= 0, got '-1'"),
        (["astronaut", "--init", "best"], "argument --init: invalid choice: 'best'"),
        (["astronaut", "--sweep", "9:3"], "argument --sweep: expected 1 <= KMIN <= KMAX"),
        (["astronaut", "--mask", "BROKEN"], "cannot read image"),
        (["camera", "-k", "300000"], "n_clusters=300000 is larger than the number of pixels"),
        (["camera", "--sigma", "-1"], "argument --sigma: expected a number >= 0, got '-1'"),
        (["camera", "--sigma", "1,2,3"], "sigma must be a number or 2 numbers"),
        (["camera", "--features", "edges"], "argument --features: expected feature kinds"),
        (["camera", "--features", "std"], "'std' is taken at a Gaussian scale; give sigma"),
        (["camera", "--model", "nope.json"], "no such model file: 'nope.json'"),
        (["camera", "--channel-axis", "C"], "expected an axis (an integer) or none, got 'C'"),
        (["camera", "--model", "."], "--model '.' is a folder, not a model file"),
        (["camera", "--model", "BROKEN", "--sweep", "2:3"], "cannot be combined with --sweep"),
        (["camera", "--model", "BROKEN"], "is not a napari-kmeanz model"),
        (["camera", "coffee", "--sweep", "2:3"], "--sweep cannot be used with several images"),
        (["nothing/*.png"], "no file matches 'nothing/*.png'"),
    ],
)
def test_bad_input_exit_code_2_and_one_line(files, tmp_path, args, message):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    args = [str(broken) if a == "BROKEN" else a for a in args]
    out = tmp_path / "out"
    done = run(*args, "-o", out, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_interrupted_write_leaves_no_file_under_its_final_name(tmp_path):
    from napari_kmeanz._io import atomic

    target = tmp_path / "result.png"
    with pytest.raises(RuntimeError), atomic(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_help_documents_the_defaults():
    done = subprocess.run(
        [sys.executable, "-m", "napari_kmeanz._cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for part in ("default: 50", "default: 5)", "default: kmeanz-output", "same footing"):
        assert part in text


# -- every input, and runs that fail or are stopped -----------------------------------------


@pytest.mark.parametrize("every_round", [False, True])
def test_16_bit_rgb_tiff_is_written_at_16_bits(tmp_path, every_round):
    photo = data.astronaut()[::2, ::2].astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "rgb16.tif", photo)
    out = tmp_path / "out"
    flags = ["-g"] if every_round else []
    done = run(tmp_path / "rgb16.tif", "-k", 4, "-r", 2, "-o", out, "--quiet", *flags)
    assert done.returncode == 0, done.stderr
    recoloured = tifffile.imread(out / "rgb16_recoloured.tif")
    expected = kmeans(photo, 4, max_iter=2, random_state=0)
    assert recoloured.dtype == np.uint16
    np.testing.assert_array_equal(recoloured, expected.recolor())
    np.testing.assert_array_equal(io.imread(out / "rgb16_labels.png"), expected.labels)
    rounds = sorted(out.glob("rgb16_round_*.tif"))
    assert len(rounds) == (expected.n_iter if every_round else 0)
    if every_round:
        assert tifffile.imread(rounds[0]).dtype == np.uint16


def test_int64_tiff_clusters(tmp_path):
    tifffile.imwrite(tmp_path / "wide.tif", data.camera()[::4, ::4].astype(np.int64))
    done = run(tmp_path / "wide.tif", "-k", 3, "-o", tmp_path / "out", "--quiet")
    assert done.returncode == 0, done.stderr
    assert tifffile.imread(tmp_path / "out" / "wide_recoloured.tif").dtype == np.int64


def test_a_failed_run_writes_nothing_not_even_its_folder(tmp_path):
    Image.fromarray(np.repeat([[0, 255]], 8, axis=0).astype(np.uint8)).save(tmp_path / "two.png")
    out = tmp_path / "new" / "out"
    done = run(tmp_path / "two.png", "-k", 3, "-o", out, "--quiet")
    assert done.returncode == 2 and "n_clusters=3 is larger" in done.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("outdir", "match"),
    [("a_file/sub", "'a_file' is a file"), ("a_file", "is a file")],
)
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, outdir, match):
    (tmp_path / "a_file").write_text("not a folder")
    # the image does not exist: the folder is checked first, before the image is read
    done = run("no_such_image.png", "-o", outdir, cwd=tmp_path)
    assert done.returncode == 2 and match in done.stderr
    assert "output folder" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_seed_is_checked_by_the_command_line():
    done = run("camera", "--seed", "-1")
    assert done.returncode == 2
    assert "--seed: expected a whole number >= 0, got '-1'" in done.stderr
    assert "random_state" not in done.stderr


def test_writers_to_one_output_use_temporary_files_of_their_own(tmp_path):
    from napari_kmeanz._io import atomic

    target = tmp_path / "out.png"
    with atomic(target) as first, atomic(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".out.") and first.suffix == ".png"
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer writer finished last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_run_stopped_between_a_rename_and_its_record_leaves_no_file(tmp_path):
    """A signal can land after a file is renamed into place and before the run notes it:
    the rollback still removes it (and the folder the run made), and leaves a file that was
    there before and that the run placed but never replaced."""
    from napari_kmeanz._io import OutputFolder, atomic

    (tmp_path / "old.json").write_text("the user's")
    for existing in (False, True):
        outputs = OutputFolder(tmp_path / "out" if not existing else tmp_path)
        renamed = outputs.path("round_001.png")
        with atomic(renamed) as temporary:
            temporary.write_bytes(b"written")
        # (stopped here: not yet outputs.wrote(renamed))
        untouched = outputs.path("old.json")
        outputs.rollback()
        assert not renamed.exists()
        assert untouched.exists() == existing
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]
    assert (tmp_path / "old.json").read_text() == "the user's"


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(2, 130, "interrupted"), (15, 143, "terminated")]
)
def test_a_signal_stops_the_run_with_one_line_and_leaves_no_file(tmp_path, signum, code, word):
    import time

    out = tmp_path / "out"
    process = subprocess.Popen(
        [COMMAND, "retina", "-k", "40", "-s", "1", "-r", "500", "--tol", "0", "-g", "-o", out],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(out.glob("retina_round_*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(out.glob("retina_round_*")), "no round was written"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if "napari-kmeanz" in line]
    assert lines == [f"napari-kmeanz: {word}"], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not out.exists()  # every file of the run removed, the folder it made too
