"""``shufflenet export``: the deploy graph written as ONNX, OpenVINO IR or torch.export, then verified."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

from shufflenet.cli._common import CliError, Command, add_model_options
from shufflenet.data.catalog import DATASETS, InputContract
from shufflenet.registry import create_model, list_models
from shufflenet.train.config import parse_overrides

HELP = "export the deploy graph (ONNX, OpenVINO, torch.export) and verify it"
DESCRIPTION = (
    "Build the deploy graph (BN folded, channel shuffles folded into the weights), write it "
    "as ONNX, OpenVINO IR or a torch.export program, then load the written file and compare it with "
    "the eager model on random inputs (and real ones with --calib): fp32 must agree within 1e-4. "
    "Trained weights are exported at the input size their model.json (or checkpoint) records. "
    "Prints the difference and the latency of both. --int8 quantizes with ONNX Runtime static "
    "quantization (--format engine: the engine's own, with each operation's int8 error) calibrated on "
    "--calib and reports the accuracy change instead; --format engine --precision bf16 plans bfloat16 "
    "dot products (CPUs with AVX512_BF16) and reports the same."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="registered model name (random weights), checkpoint.pt or model.safetensors"
    )
    parser.add_argument(
        "--format",
        choices=("onnx", "openvino", "pt2", "engine"),
        default="onnx",
        help="engine: the C engine's plan for this CPU (runs in csrc/runner.c), with the input contract as "
        "JSON beside it (default: onnx)",
    )
    parser.add_argument("--output", help="file to write (default: exports/NAME.{onnx,xml,pt2,plan})")
    add_model_options(
        parser,
        input_size=None,
        input_size_help="default: a checkpoint's trained size, else the --calib dataset's, else 224 224",
        example="--set layout=torchvision",
    )
    parser.add_argument("--no-optimize", action="store_true", help="export the plain graph (no folding)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8: ONNX Runtime static quantization (onnx, openvino) or the engine's own (engine)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8"),
        help="int8: the same as --int8; bf16: the engine's bfloat16 dot products, on CPUs with AVX512_BF16 "
        "(default: fp32)",
    )
    parser.add_argument(
        "--calib",
        choices=tuple(DATASETS),
        help="dataset for real-input checks, int8 calibration (train split) and accuracy (val)",
    )
    parser.add_argument("--data-dir", help="dataset folder for --calib")
    parser.add_argument("--calib-samples", type=int, default=256, help="calibration images (default: 256)")
    parser.add_argument(
        "--accuracy-samples",
        type=int,
        default=0,
        help="val images for the accuracy comparison (default: all with int8 or bf16, none otherwise)",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads for the latency check (default: 1)")


def export_target(args: argparse.Namespace) -> tuple[nn.Module, str, InputContract | None]:
    """The model to export, a file stem and the model's input contract: a registered name (random weights,
    no contract) or a checkpoint path (its contract, if it records one)."""
    overrides = parse_overrides(args.set)
    if args.target in list_models():
        model = create_model(args.target, num_classes=args.num_classes, in_chans=args.in_chans, **overrides)
        return model, args.target, None
    from shufflenet.train.checkpoint import load_input_contract
    from shufflenet.train.evaluate import load_for_evaluation

    if not Path(args.target).exists():
        raise CliError(
            f"{args.target!r} is neither a registered model nor an existing file; see `shufflenet models` "
            "or pass a checkpoint.pt / model.safetensors path"
        )
    if overrides:
        raise CliError("--set applies to registered model names; a checkpoint already records its arguments")
    model, name, _ = load_for_evaluation(args.target)
    return model, name, load_input_contract(args.target)


def input_size_for(args: argparse.Namespace, contract: InputContract | None) -> tuple[int, int] | None:
    """The graph's input size: the trained one from the contract (an explicit --input-size must agree),
    else --input-size; None leaves it to --calib or the 224x224 default."""
    given = (args.input_size[0], args.input_size[1]) if args.input_size else None
    if contract is None:
        return given
    if given is not None and given != contract.image_size:
        height, width = contract.image_size
        raise CliError(
            f"--input-size {given[0]} {given[1]} contradicts the {height}x{width} input the model was "
            f"trained at ({contract.source}); drop --input-size"
        )
    print(contract.describe())
    if args.calib and args.calib != contract.dataset:
        print(f"note: --calib {args.calib}, but the model was trained on {contract.dataset}")
    return contract.image_size


def run(args: argparse.Namespace) -> int:
    from shufflenet.deploy.calibration import export_data
    from shufflenet.deploy.export import SUFFIX, ExportError, export_model

    if args.int8 and args.precision not in (None, "int8"):
        raise CliError(f"--int8 and --precision {args.precision} contradict each other; drop one")
    precision = "int8" if args.int8 else args.precision or "fp32"
    if precision == "bf16" and args.format != "engine":
        raise CliError("--precision bf16 runs on the engine: add --format engine")
    args.int8 = precision == "int8"
    model, name, contract = export_target(args)
    input_size = input_size_for(args, contract)
    data = None
    if args.calib:
        data = export_data(
            args.calib,
            model.in_chans,
            data_dir=args.data_dir,
            input_size=input_size,
            calib_samples=args.calib_samples,
            accuracy_samples=args.accuracy_samples,
            contract=contract,
        )
        input_size = data.input_size
    elif args.int8:
        raise CliError("--int8 needs calibration data: add --calib DATASET (e.g. --calib fashion-mnist)")
    # The suffix is appended, not substituted: NAME.int8 must keep its ".int8".
    tag = "" if precision == "fp32" else f".{precision}"
    default = Path("exports") / f"{name}{tag}{SUFFIX[args.format]}"
    output = Path(args.output) if args.output else default
    measure_accuracy = data is not None and (precision != "fp32" or args.accuracy_samples)
    try:
        report = export_model(
            model,
            output,
            args.format,
            input_size=input_size or (224, 224),
            real_inputs=data.real_inputs if data else None,
            optimize_graph=not args.no_optimize,
            precision=precision,
            calibration=data.calibration if data else [],
            accuracy_data=data.accuracy_data if measure_accuracy else None,
            threads=args.threads,
            metadata={
                "model": name,
                "precision": precision,
                "input": None if contract is None else contract.to_dict(),
            },
        )
    except ExportError as error:
        print(f"shufflenet export: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.passed else 1


COMMAND = Command("export", HELP, DESCRIPTION, add_arguments, run)
