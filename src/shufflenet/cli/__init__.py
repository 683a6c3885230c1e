"""The ``shufflenet`` command: one module per subcommand, each a thin shell over a library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shufflenet.cli import bench, detect, evaluate, export, models, profile, reproduce, shift, train
from shufflenet.cli._common import CliError, add_command

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
  shufflenet reproduce --list                       the papers' tables that need training
  shufflenet reproduce shufflenet-t2                ShuffleNet Table 2 on Fashion-MNIST, judged claim by claim
  shufflenet detect train                           a detector on the offline Fashion-MNIST set (COCO format)
"""

COMMANDS = (models, profile, train, evaluate, export, bench, shift, reproduce, detect)

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``shufflenet`` parser: each command module adds its own subparser and handler."""
    parser = argparse.ArgumentParser(
        prog="shufflenet",
        description="Efficient CNNs from the ShuffleNet V1/V2, MobileNet V1/V2 and sparse shift papers: the "
        "model zoo and its complexity, counted as the papers count it; training with the papers' recipes; "
        "verified export and speed measured beside the usual runtimes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        add_command(sub, command.COMMAND)
    return parser


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
