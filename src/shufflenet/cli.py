"""The ``shufflenet`` command: each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from shufflenet._table import markdown_table
from shufflenet.profile import profile
from shufflenet.registry import create_model, list_models, model_cards
from shufflenet.train.config import parse_overrides

EXAMPLES = """\
examples:
  shufflenet train                                  Fashion-MNIST, quick recipe: train, evaluate, summarize
  shufflenet train --recipe imagenet-shufflenet-v1 --data-dir /data/imagenet
  torchrun --nproc_per_node 8 -m shufflenet train --recipe imagenet-shufflenet-v2 --data-dir /data/imagenet
  shufflenet train --output runs/fm --resume         continue an interrupted run where it stopped
  shufflenet evaluate --checkpoint runs/fm/model.safetensors --dataset fashion-mnist
  shufflenet models                                 the zoo: params and MFLOPs of every model
  shufflenet models --compare 'shufflenet_v1_*'     ours beside the papers' figures
  shufflenet profile shufflenet_v2_x1_0 --per-layer MFLOPs, params and MAC of each layer
  shufflenet profile mobilenet_v1_x1_0 --input-size 160 160 --format json
  shufflenet export shufflenet_v2_x1_0 --format openvino      deploy graph, written and verified
  shufflenet export runs/fm/model.safetensors --format onnx --int8 --calib fashion-mnist
  shufflenet bench latency                          ours beside eager, compile, ONNX Runtime, OpenVINO
  shufflenet bench guidelines                       ShuffleNet V2 guideline experiments G1-G4
  shufflenet bench train                            training throughput on synthetic batches
  shufflenet shift sweep --lambdas 0 0.005 0.02     sparse shift: accuracy and sparsity per lambda
  shufflenet shift remove --counts 0 4 8 9          retrain without the least important shift layers
"""


class CliError(Exception):
    """A misuse the user can fix; printed as one line, exit status 2."""


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; try `shufflenet models` for the full list")
    cards = model_cards()
    selected = [cards[name] for name in names]
    if args.format == "json":
        print(json.dumps([vars(card) for card in selected], indent=2))
        return 0
    if args.compare:
        headers = [
            "model",
            "params (M)",
            "paper params (M)",
            "MFLOPs",
            "paper MFLOPs",
            "MFLOPs diff %",
            "paper top-1 err %",
            "source",
        ]
        rows = [
            [
                c.name,
                _fmt(c.params / 1e6, 3),
                _fmt(c.paper_params_m),
                _fmt(c.mflops),
                _fmt(c.paper_mflops, 0),
                _fmt(100 * (c.mflops - c.paper_mflops) / c.paper_mflops) if c.paper_mflops else "",
                _fmt(c.paper_top1_err),
                c.source or "",
            ]
            for c in selected
        ]
    else:
        headers = ["model", "family", "params (M)", "MFLOPs"]
        rows = [[c.name, c.family, _fmt(c.params / 1e6, 3), _fmt(c.mflops)] for c in selected]
    if args.format == "csv":
        print(",".join(headers))
        for row in rows:
            print(",".join(f'"{v}"' if "," in str(v) else str(v) for v in row))
    else:
        print(markdown_table(headers, rows))
        print(
            "\nMFLOPs: multiply-adds of conv and FC layers at 224x224, 1000 classes "
            "(CIFAR-native ShiftResNets: 32x32, 10 classes)."
        )
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, **overrides)
    result = profile(model, tuple(args.input_size), name=args.model)
    if args.format == "json":
        print(result.to_json(per_layer=args.per_layer))
    elif args.format == "csv":
        print(result.to_csv(per_layer=args.per_layer), end="")
    else:
        if args.per_layer:
            rows = [
                [
                    layer.name,
                    layer.kind,
                    "x".join(map(str, layer.output_shape)),
                    _fmt(layer.mflops, 3),
                    f"{layer.params:,}",
                    f"{layer.mac:,}",
                ]
                for layer in result.layers
            ]
            print(markdown_table(["layer", "kind", "output", "MFLOPs", "params", "MAC (elements)"], rows))
            print()
        totals = result.totals()
        print(
            markdown_table(
                ["model", "input", "MFLOPs", "params", "MAC (M elements)", "MAC (MB)"],
                [
                    [
                        args.model,
                        totals["input_size"],
                        _fmt(result.mflops, 2),
                        f"{result.params:,}",
                        _fmt(result.mac / 1e6, 2),
                        _fmt(result.mac_bytes / 1e6, 2),
                    ]
                ],
            )
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from shufflenet.train.config import list_recipes, load_config
    from shufflenet.train.engine import TrainingDiverged, TrainingInterrupted, train

    if args.list_recipes:
        for name in list_recipes():
            print(name)
        return 0
    overrides = parse_overrides(args.set)
    for key in (
        "model",
        "dataset",
        "data_dir",
        "epochs",
        "batch_size",
        "lr",
        "output",
        "device",
        "num_workers",
    ):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.skip_bad_images:
        overrides["skip_bad_images"] = True
    if args.no_progress:
        overrides["progress"] = False
    config = load_config(args.recipe, overrides)
    try:
        train(config, resume=args.resume if args.resume != "" else True)
    except TrainingInterrupted as stop:
        print(f"shufflenet train: {stop}", file=sys.stderr)
        return 130
    except TrainingDiverged as failure:
        print(f"shufflenet train: error: {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from shufflenet.train.evaluate import evaluate_checkpoint

    summary = evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        data_dir=args.data_dir,
        model_name=args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        device=args.device,
        num_workers=args.num_workers,
        output=args.output,
    )
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return 0
    print(
        markdown_table(
            ["model", "dataset", "samples", "top-1 err %", "top-5 err %", "loss"],
            [
                [
                    summary["model"],
                    summary["dataset"],
                    summary["samples"],
                    _fmt(summary["top1_err"], 2),
                    _fmt(summary["top5_err"], 2),
                    _fmt(summary["loss"], 4),
                ]
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["class", "accuracy %"],
            [[name, _fmt(100 * acc, 2)] for name, acc in summary["per_class_accuracy"].items()],
        )
    )
    if "confusion_matrix_png" in summary:
        print(f"\nconfusion matrix: {summary['confusion_matrix_png']}")
    return 0


def _export_target(args: argparse.Namespace):
    """The model to export and a file stem: a registered name (random weights unless --weights) or a
    checkpoint/safetensors path."""
    overrides = parse_overrides(args.set)
    if args.target in list_models():
        model = create_model(args.target, num_classes=args.num_classes, in_chans=args.in_chans, **overrides)
        return model, args.target
    from pathlib import Path

    from shufflenet.train.evaluate import load_for_evaluation

    if not Path(args.target).exists():
        raise CliError(
            f"{args.target!r} is neither a registered model nor an existing file; see `shufflenet models` "
            "or pass a checkpoint.pt / model.safetensors path"
        )
    if overrides:
        raise CliError("--set applies to registered model names; a checkpoint already records its arguments")
    model, name, _ = load_for_evaluation(args.target)
    return model, name


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from shufflenet.deploy.export import ExportError, export_model

    model, name = _export_target(args)
    real_inputs, calibration, accuracy_data = None, [], None
    input_size = tuple(args.input_size) if args.input_size else None
    if args.calib:
        from shufflenet.data import build_dataset, dataset_info

        info = dataset_info(args.calib)
        input_size = input_size or (info.image_size, info.image_size)
        train_set = build_dataset(args.calib, "train", args.data_dir)
        accuracy_data = build_dataset(args.calib, "val", args.data_dir)
        if args.accuracy_samples:
            accuracy_data = torch.utils.data.Subset(
                accuracy_data, range(min(args.accuracy_samples, len(accuracy_data)))
            )
        real_inputs = torch.stack([accuracy_data[index][0] for index in range(8)])
        if real_inputs.shape[1] != model.in_chans or (
            args.input_size and tuple(args.input_size) != input_size
        ):
            raise CliError(
                f"{args.calib} images are {tuple(real_inputs.shape[1:])} but the model takes "
                f"{model.in_chans} channels at {input_size[0]}x{input_size[1]}; export a model trained on "
                f"{args.calib} (e.g. a run's model.safetensors) or drop --calib"
            )
        step = max(1, len(train_set) // args.calib_samples)
        picks = [train_set[index][0] for index in range(0, step * args.calib_samples, step)]
        calibration = [image.unsqueeze(0).numpy() for image in picks]
    elif args.int8:
        raise CliError("--int8 needs calibration data: add --calib DATASET (e.g. --calib fashion-mnist)")
    input_size = input_size or (224, 224)
    output = Path(args.output) if args.output else Path("exports") / f"{name}{'.int8' if args.int8 else ''}"
    try:
        report = export_model(
            model,
            output,
            args.format,
            input_size=input_size,
            real_inputs=real_inputs,
            optimize_graph=not args.no_optimize,
            int8=args.int8,
            calibration=calibration,
            accuracy_data=accuracy_data if args.int8 or args.accuracy_samples else None,
            threads=args.threads,
        )
    except ExportError as error:
        print(f"shufflenet export: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.passed else 1


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shufflenet.bench.latency import headline_ratios, latency_benchmark, latency_plot, latency_table
    from shufflenet.deploy.runtimes import default_threads

    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    if any(len(size) != 2 for size in sizes):
        raise CliError(f"--sizes takes HxW values like 224x224, got {args.sizes}")
    threads = sorted({default_threads() if t == "all" else int(t) for t in args.threads})
    cells = latency_benchmark(
        args.models,
        sizes=sizes,
        threads=threads,
        runtimes=args.runtimes,
        batch=args.batch,
        repeats=args.repeats,
        rounds=args.rounds,
        progress=not args.no_progress,
    )
    table = latency_table(cells)
    ratios = headline_ratios(cells)
    print(table)
    print("\nmedian ms (p90 ms) per cell, batch", args.batch)
    for what, value, target in ratios:
        print(f"- {what}: {value:.2f} (target {target})")
    for cell in cells:
        if cell.error:
            print(
                f"- error: {cell.model} {cell.height}x{cell.width} t{cell.threads} {cell.runtime}: "
                f"{cell.error}"
            )
    if args.output:
        from shufflenet.bench.report import write_latency_results

        written = write_latency_results(cells, table, ratios, Path(args.output), command=args.command_line)
        for key in ("md", "csv", "json"):
            print(f"wrote {written[key]}")
        png = latency_plot(cells, Path(args.output) / "latency.png", size=sizes[0], threads=threads[0])
        print(f"wrote {png}")
    return 0


def _write_bench_record(args: argparse.Namespace, stem: str, title: str, body: str, rows) -> None:
    if args.output:
        from dataclasses import asdict, is_dataclass
        from pathlib import Path

        from shufflenet.bench.report import environment, write_record

        plain = [asdict(row) if is_dataclass(row) else row for row in rows]
        written = write_record(Path(args.output), stem, title, body, plain, environment(args.command_line))
        print(f"\nwrote {written['md']}, {written['csv'].name}, {written['json'].name}")


def cmd_bench_guidelines(args: argparse.Namespace) -> int:
    import torch

    from shufflenet.bench.guidelines import guidelines_report, run_guidelines

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    results, reports = [], []
    for device in devices:
        rows = run_guidelines(
            device=device,
            threads=args.threads,
            repeats=args.repeats,
            multipliers=tuple(args.multipliers),
            experiments=tuple(args.experiments),
            progress=not args.no_progress,
        )
        results += rows
        reports.append(f"## {device.upper()}\n\n{guidelines_report(rows)}")
    body = "\n\n".join(reports)
    print(body)
    _write_bench_record(args, "guidelines", "ShuffleNet V2 guideline experiments (Tables 1-4)", body, results)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from shufflenet.bench.train_throughput import train_throughput, train_throughput_report

    rows = train_throughput(
        args.models,
        batch_size=args.batch_size,
        image_size=args.image_size,
        steps=args.steps,
        device=args.device,
        modes=tuple(args.modes),
        amp=args.amp,
        channels_last=args.channels_last,
        threads=args.threads,
    )
    body = train_throughput_report(rows)
    print(body)
    _write_bench_record(args, "train_throughput", "Training throughput on synthetic batches", body, rows)
    return 0


def _shift_config(args: argparse.Namespace):
    from shufflenet.train.config import load_config

    overrides = parse_overrides(args.set)
    for key in ("model", "data_dir", "epochs", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.no_progress:
        overrides["progress"] = False
    return load_config(args.recipe, overrides)


def cmd_shift_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shufflenet.bench.report import environment, environment_markdown
    from shufflenet.ops import sparsity_table
    from shufflenet.train import shift_experiments as experiments

    config = _shift_config(args)
    runs = experiments.lambda_sweep(config, args.lambdas, Path(args.output))
    env = environment(args.command_line)
    paper = experiments.PAPER_TABLE1_SHIFTRESNET20 if config.model.startswith("shiftresnet20") else None
    text = (
        f"# Shift-loss sweep (Chen et al. 2019, Table 1): {config.model}, {config.dataset}, {config.epochs} epochs, "
        f"{config.shift_norm} shift loss, shifts frozen at epoch {config.freeze_shifts_epoch}\n\n"
        f"{environment_markdown(env)}\n\n{experiments.sweep_table(runs, paper)}\n"
    )
    for run in runs:
        text += f"\n## Per-layer sparsity, lambda {run.shift_lambda:g} (Table 2 format)\n\n"
        text += sparsity_table(run.sparsity) + "\n"
    experiments.write_report(Path(args.output), "shift_sweep", text, runs, env)
    print(text)
    return 0


def cmd_shift_remove(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shufflenet.bench.report import environment, environment_markdown
    from shufflenet.ops import ShiftSparsityRow, sparsity_table
    from shufflenet.train import shift_experiments as experiments

    config = _shift_config(args)
    output = Path(args.output)
    if args.ranking:
        summary_path = Path(args.ranking) / "summary.json"
        if not summary_path.is_file():
            raise CliError(f"{summary_path} not found; --ranking takes the directory of a finished run")
        rows = json.loads(summary_path.read_text()).get("shift_sparsity")
        if not rows:
            raise CliError(
                f"{summary_path} has no shift sparsity; rank with a run of a model with SSL layers"
            )
        ranking = [ShiftSparsityRow(**row) for row in rows]
    else:
        ranking_run = experiments.lambda_sweep(config, [args.ranking_lambda], output / "ranking")[0]
        ranking = list(ranking_run.sparsity)
    runs = experiments.removal_study(config, ranking, args.counts, output)
    env = environment(args.command_line)
    paper = experiments.PAPER_TABLE3_SHIFTRESNET20 if config.model.startswith("shiftresnet20") else None
    text = (
        f"# Removing the least important shift layers (Chen et al. 2019, Tables 2-3): {config.model}, "
        f"{config.dataset}, {config.epochs} epochs, lambda {config.shift_lambda:g}\n\n"
        f"{environment_markdown(env)}\n\n"
        f"## Ranking (Table 2 format)\n\n{sparsity_table(ranking)}\n\n"
        f"## Accuracy after removal (Table 3 format)\n\n{experiments.removal_table(runs, paper)}\n"
    )
    experiments.write_report(output, "shift_removal", text, runs, env)
    print(text)
    return 0


def cmd_shift_sparsity(args: argparse.Namespace) -> int:
    from shufflenet.ops import shift_sparsity, sparsity_table
    from shufflenet.train.evaluate import load_for_evaluation

    model, name, _ = load_for_evaluation(args.checkpoint)
    rows = shift_sparsity(model)
    if not rows:
        raise CliError(f"{name} has no shift layers; this report is for SSL / grouped-shift models")
    print(sparsity_table(rows))
    return 0


def _add_shift_run_options(parser: argparse.ArgumentParser, output: str) -> None:
    parser.add_argument(
        "--recipe", default="fashion-mnist-shift", help="recipe name or YAML (default: fashion-mnist-shift)"
    )
    parser.add_argument(
        "--model", help="a model with shift layers (default: the recipe's, shiftresnet20_ssl)"
    )
    parser.add_argument("--data-dir", help="dataset folder")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the recipe's)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--output", default=output, help=f"folder for the runs and tables (default: {output})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_set_option(parser, "override any training setting, e.g. --set shift_norm=l1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shufflenet",
        description="Efficient CNNs from the ShuffleNet V1/V2 and MobileNet V1/V2 papers: the model zoo "
        "and its complexity, counted as the papers count it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser(
        "models",
        help="list the model zoo with params and MFLOPs",
        description="List registered models with their params and MFLOPs at 224x224 (from the model "
        "cards); --compare puts the papers' figures beside ours.",
    )
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    models.add_argument("--compare", action="store_true", help="show the papers' MFLOPs, params and error")
    models.add_argument("--format", choices=("table", "csv", "json"), default="table")
    models.set_defaults(handler=cmd_models)

    prof = sub.add_parser(
        "profile",
        help="count MFLOPs, params and memory access cost of a model",
        description="Count multiply-adds (conv and FC only, as the papers do), parameters (BN affine "
        "included) and memory access cost (feature-map reads + writes + weights, ShuffleNet V2 "
        "section 2) of one forward pass at batch 1.",
    )
    prof.add_argument("model", help="registered model name (see `shufflenet models`)")
    prof.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=(224, 224),
        help="input height and width (default: 224 224)",
    )
    prof.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default: 1000)")
    prof.add_argument("--in-chans", type=int, default=3, help="input channels (default: 3)")
    _add_set_option(prof, "override a model argument, e.g. --set shuffle=false --set layout=torchvision")
    prof.add_argument("--per-layer", action="store_true", help="one row per layer as well as the totals")
    prof.add_argument("--format", choices=("table", "csv", "json"), default="table")
    prof.set_defaults(handler=cmd_profile)

    tr = sub.add_parser(
        "train",
        help="train a model with a paper's recipe (default: Fashion-MNIST, quick)",
        description="Train with a recipe (the papers' settings, shipped as YAML), evaluate, and print a "
        "summary. Writes a checkpoint (full state, atomically), metrics.csv/json, TensorBoard logs, "
        "learning curves and a confusion matrix (PNG), and model.safetensors + model.json to the run "
        "directory. Under torchrun it trains data-parallel (gloo on CPU, NCCL on GPU). Ctrl-C saves a "
        "checkpoint first; --resume continues exactly where it stopped.",
        epilog="recipes: " + ", ".join(_recipe_names()) + ". Any setting: --set KEY=VALUE, e.g. "
        "--set label_smoothing=0.1 --set model_args.small_input=true --set ema_decay=0.999.",
    )
    tr.add_argument(
        "--recipe",
        default="fashion-mnist-quick",
        help="recipe name or YAML file (default: fashion-mnist-quick)",
    )
    tr.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    tr.add_argument("--model", help="registered model name (default: the recipe's)")
    tr.add_argument("--dataset", choices=("fashion-mnist", "cifar10", "cifar100", "imagefolder"))
    tr.add_argument("--data-dir", help="dataset folder (imagefolder: with train/ and val/)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int, help="global batch size over all processes")
    tr.add_argument("--lr", type=float, help="learning rate (scaled with the batch if the recipe says so)")
    tr.add_argument("--output", help="run directory (default: runs/RECIPE-MODEL)")
    tr.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the run directory's checkpoint, or from CHECKPOINT",
    )
    tr.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    tr.add_argument("--num-workers", type=int, help="data-loading processes")
    tr.add_argument("--skip-bad-images", action="store_true", help="skip and count unreadable images")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_set_option(tr, "override any setting, e.g. --set lr=0.05 --set model_args.small_input=true")
    tr.set_defaults(handler=cmd_train)

    ev = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error, per-class accuracy and confusion matrix of trained weights",
        description="Evaluate a training checkpoint (.pt or its run directory) or exported weights "
        "(.safetensors with its .json) on a dataset's val split, single crop (imagefolder: resize 256, "
        "center crop 224). Writes confusion_matrix.png.",
    )
    ev.add_argument(
        "--checkpoint", required=True, help="checkpoint.pt, a run directory, or model.safetensors"
    )
    ev.add_argument(
        "--dataset", required=True, choices=("fashion-mnist", "cifar10", "cifar100", "imagefolder")
    )
    ev.add_argument("--model", help="model name (checked against the checkpoint's)")
    ev.add_argument("--data-dir", help="dataset folder")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--image-size", type=int, help="evaluation crop (default: the dataset's)")
    ev.add_argument("--device", help="cpu, cuda or cuda:N")
    ev.add_argument("--num-workers", type=int, default=0)
    ev.add_argument("--output", help="folder for confusion_matrix.png (default: the checkpoint's)")
    ev.add_argument("--format", choices=("table", "json"), default="table")
    ev.set_defaults(handler=cmd_evaluate)

    ex = sub.add_parser(
        "export",
        help="export the deploy graph (ONNX, OpenVINO, torch.export) and verify it",
        description="Build the deploy graph (BN folded, channel shuffles folded into the weights), write it "
        "as ONNX, OpenVINO IR or a torch.export program, then load the written file and compare it with "
        "the eager model on random inputs (and real ones with --calib): fp32 must agree within 1e-4. "
        "Prints the difference and the latency of both. --int8 quantizes with ONNX Runtime static "
        "quantization calibrated on --calib and reports the accuracy change instead.",
    )
    ex.add_argument(
        "target", help="registered model name (random weights), checkpoint.pt or model.safetensors"
    )
    ex.add_argument("--format", choices=("onnx", "openvino", "pt2"), default="onnx")
    ex.add_argument("--output", help="file to write (default: exports/NAME.{onnx,xml,pt2})")
    ex.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="default: the --calib dataset's size, else 224 224",
    )
    ex.add_argument("--num-classes", type=int, default=1000, help="for a registered name (default: 1000)")
    ex.add_argument("--in-chans", type=int, default=3, help="for a registered name (default: 3)")
    _add_set_option(ex, "override a model argument of a registered name, e.g. --set layout=torchvision")
    ex.add_argument("--no-optimize", action="store_true", help="export the plain graph (no folding)")
    ex.add_argument("--int8", action="store_true", help="static int8 quantization (onnx, openvino)")
    ex.add_argument(
        "--calib",
        choices=("fashion-mnist", "cifar10", "cifar100", "imagefolder"),
        help="dataset for real-input checks, int8 calibration (train split) and accuracy (val)",
    )
    ex.add_argument("--data-dir", help="dataset folder for --calib")
    ex.add_argument("--calib-samples", type=int, default=256, help="calibration images (default: 256)")
    ex.add_argument(
        "--accuracy-samples",
        type=int,
        default=0,
        help="val images for the accuracy comparison (default: all with --int8, none otherwise)",
    )
    ex.add_argument("--threads", type=int, default=1, help="threads for the latency check (default: 1)")
    ex.set_defaults(handler=cmd_export)

    bench = sub.add_parser(
        "bench",
        help="speed benchmarks: latency across runtimes, V2 guidelines, training throughput",
        description="Measure actual speed (FLOPs are not speed: ShuffleNet V2 section 2).",
    )
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    lat = bench_sub.add_parser(
        "latency",
        help="models x input sizes x threads x runtimes, each cell in its own process",
        description="Median and p90 latency of each model at each input size and thread count on each "
        "runtime: eager, eager channels_last, eager_deploy (our deploy graph in eager, channels_last), "
        "torch.compile, ONNX Runtime, OpenVINO, engine (our C engine: "
        "ShuffleNet V1/V2, one thread, AVX2) and ours (the fastest of the engine and the deploy graph on "
        "OpenVINO, ONNX Runtime or PyTorch). Each cell runs in a fresh subprocess "
        "after warm-up. Prints a Markdown table "
        "with the papers' ARM figures beside and the acceptance ratios; --output also writes "
        "latency.md/.csv/.json and latency.png (latency vs MFLOPs).",
    )
    lat.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_LATENCY_MODELS),
        metavar="MODEL",
        help="model specs: NAME, NAME[key=value,...] or torchvision:NAME (default: the acceptance set)",
    )
    lat.add_argument(
        "--sizes",
        nargs="+",
        default=["224x224"],
        metavar="HxW",
        help="input sizes (Table 8 uses 224x224 480x640 720x1280; default: 224x224)",
    )
    lat.add_argument(
        "--threads", nargs="+", default=["1"], metavar="N", help="thread counts; 'all' = every core"
    )
    lat.add_argument(
        "--runtimes",
        nargs="+",
        default=list(_runtimes()),
        metavar="RUNTIME",
        help="subset of: " + ", ".join(_runtimes()),
    )
    lat.add_argument("--batch", type=int, default=1)
    lat.add_argument(
        "--repeats", type=int, default=50, help="timed runs per cell after warm-up (default: 50)"
    )
    lat.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every cell this many times, in a new order each round, and report the median "
        "(evens out load drift on shared machines; default: 1)",
    )
    lat.add_argument("--output", help="folder for latency.md/.csv/.json/.png")
    lat.add_argument("--no-progress", action="store_true")
    lat.set_defaults(handler=cmd_bench_latency)

    gl = bench_sub.add_parser(
        "guidelines",
        help="ShuffleNet V2 guideline experiments G1-G4 (V2 paper Tables 1-4)",
        description="The four guideline experiments of ShuffleNet V2 section 2 (56x56 input, 10 stacked "
        "blocks, the paper's channel and group settings) on CPU (batch 1) and on CUDA when present "
        "(batch 8), printed beside the paper's figures with a verdict on whether each ordering holds here. "
        "The settings compared in a table are timed interleaved.",
    )
    gl.add_argument(
        "--experiments", nargs="+", default=["G1", "G2", "G3", "G4"], choices=["G1", "G2", "G3", "G4"]
    )
    gl.add_argument("--multipliers", nargs="+", type=int, default=[1, 2, 4], help="channel multipliers")
    gl.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1, like the paper's ARM)")
    gl.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="timed runs per cell; the settings of one table row group run in turn, in shuffled passes, so "
        "drift in the machine's speed cannot decide an ordering (default: 30)",
    )
    gl.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    gl.add_argument("--output", help="folder for guidelines.md/.csv/.json")
    gl.add_argument("--no-progress", action="store_true")
    gl.set_defaults(handler=cmd_bench_guidelines)

    bt = bench_sub.add_parser(
        "train",
        help="training throughput (images/s, peak memory) on synthetic batches",
        description="Images/s and peak memory of SGD training steps on random data, eager vs "
        "torch.compile; bf16 autocast and channels_last apply on CUDA.",
    )
    bt.add_argument(
        "--models",
        nargs="+",
        default=["shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0"],
        metavar="MODEL",
    )
    bt.add_argument("--batch-size", type=int, default=64)
    bt.add_argument("--image-size", type=int, default=224)
    bt.add_argument("--steps", type=int, default=10, help="timed steps after warm-up (default: 10)")
    bt.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    bt.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    bt.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    bt.add_argument("--channels-last", action="store_true")
    bt.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    bt.add_argument("--output", help="folder for train_throughput.md/.csv/.json")
    bt.set_defaults(handler=cmd_bench_train)

    shift = sub.add_parser(
        "shift",
        help="the sparse-shift ablations: lambda sweep, shift-layer removal, sparsity report",
        description="The Sparse Shift Layer ablations of Chen et al. 2019 (Tables 1-3) as training runs on any dataset the "
        "pipeline reads (default recipe: ShiftResNet-20 SSL on Fashion-MNIST, a few epochs).",
    )
    shift_sub = shift.add_subparsers(dest="shift_command", metavar="SHIFT", required=True)
    sweep = shift_sub.add_parser(
        "sweep",
        help="Table 1: accuracy and shift sparsity for several shift-loss weights lambda",
        description="Train once per lambda (Chen et al. 2019, eq. 4) and write shift_sweep.md/json with accuracy, "
        "shift sparsity and the per-layer sparsity of every run. The paper's lambdas assume its "
        "64k-iteration CIFAR schedule; in a run of a few hundred steps they barely move the displacements "
        "(SGD shrinks each by about exp(-2 lambda x summed lr / (1 - momentum))), so short runs need far "
        "larger ones (the default fashion-mnist-shift recipe: 0.005-0.02). Runs already finished with the "
        "same settings in --output are reused.",
    )
    sweep.add_argument(
        "--lambdas",
        type=float,
        nargs="+",
        default=[0.0, 1e-4, 4e-4, 5e-4],
        help="shift-loss weights (default: the paper's 0 1e-4 4e-4 5e-4)",
    )
    _add_shift_run_options(sweep, "runs/shift-sweep")
    sweep.set_defaults(handler=cmd_shift_sweep)
    remove = shift_sub.add_parser(
        "remove",
        help="Tables 2-3: remove the least important shift layers and retrain",
        description="Rank shift layers by sparsity in a run trained with the shift loss (--ranking RUN_DIR, "
        "or a new run at --ranking-lambda), then train with the N least important ones replaced by "
        "identities for each N in --counts. Writes shift_removal.md/json.",
    )
    remove.add_argument("--counts", type=int, nargs="+", default=[0, 4, 6, 8, 9], help="layers to remove")
    remove.add_argument("--ranking", metavar="RUN_DIR", help="a finished run whose sparsity ranks the layers")
    remove.add_argument(
        "--ranking-lambda", type=float, default=5e-4, help="lambda of the ranking run (default: 5e-4)"
    )
    _add_shift_run_options(remove, "runs/shift-removal")
    remove.set_defaults(handler=cmd_shift_remove)
    sparsity = shift_sub.add_parser(
        "sparsity",
        help="Table 2 of a trained model: unshifted / total channels per shift layer",
    )
    sparsity.add_argument("checkpoint", help="model.safetensors or checkpoint.pt of a run")
    sparsity.set_defaults(handler=cmd_shift_sparsity)
    return parser


# The speed issue's acceptance ratios need these cells (benchmarks/paired_latency.py measures them too).
LATENCY_ACCEPTANCE_MODELS = (
    "shufflenet_v2_x1_0[layout=torchvision]",
    "torchvision:shufflenet_v2_x1_0",
    "shufflenet_v1_g3_x1_0",
    "shufflenet_v1_g3_x1_0[shuffle=false]",
    "shufflenet_v1_g3_x0_5",
    "torchvision:alexnet",
)
DEFAULT_LATENCY_MODELS = (*LATENCY_ACCEPTANCE_MODELS, "mobilenet_v2_x1_0", "torchvision:mobilenet_v2")


def _runtimes() -> tuple[str, ...]:
    from shufflenet.deploy.runtimes import RUNTIMES

    return RUNTIMES


def _add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _recipe_names() -> list[str]:
    from shufflenet.train.config import list_recipes

    return list_recipes()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = ["shufflenet", *argv]  # recorded beside benchmark results
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (CliError, ValueError, FileNotFoundError) as error:
        print(f"shufflenet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
