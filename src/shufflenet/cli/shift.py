"""``shufflenet shift``: the Sparse Shift Layer ablations (Chen et al. 2019, Tables 1-3) as training runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from shufflenet.cli._common import CliError, Command, add_output_options, add_set_option, given_settings
from shufflenet.train.config import TrainConfig, load_config, parse_overrides

SWEEP_DESCRIPTION = (
    "Train once per lambda (Chen et al. 2019, eq. 4) and write shift_sweep.md/json with accuracy, shift "
    "sparsity and the per-layer sparsity of every run. The paper's lambdas assume its 64k-iteration CIFAR "
    "schedule; in a run of a few hundred steps they barely move the displacements (SGD shrinks each by about "
    "exp(-2 lambda x summed lr / (1 - momentum))), so short runs need far larger ones (the default "
    "fashion-mnist-shift recipe: 0.005-0.02). Runs already finished with the same settings in --output are "
    "reused."
)
REMOVE_DESCRIPTION = (
    "Rank shift layers by sparsity in a run trained with the shift loss (--ranking RUN_DIR, or a new run at "
    "--ranking-lambda), then train with the N least important ones replaced by identities for each N in "
    "--counts. Writes shift_removal.md/json."
)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    lambdas_help = "shift-loss weights (default: the paper's 0 1e-4 4e-4 5e-4)"
    paper_lambdas = [0.0, 1e-4, 4e-4, 5e-4]
    parser.add_argument("--lambdas", type=float, nargs="+", default=paper_lambdas, help=lambdas_help)
    _add_run_options(parser, "runs/shift-sweep")


def add_remove_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 4, 6, 8, 9], help="layers to remove")
    ranking_help = "a finished run whose sparsity ranks the layers"
    parser.add_argument("--ranking", metavar="RUN_DIR", help=ranking_help)
    lambda_help = "lambda of the ranking run (default: 5e-4)"
    parser.add_argument("--ranking-lambda", type=float, default=5e-4, help=lambda_help)
    _add_run_options(parser, "runs/shift-removal")


def add_sparsity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="model.safetensors or checkpoint.pt of a run")


def _add_run_options(parser: argparse.ArgumentParser, output: str) -> None:
    recipe_help = "recipe name or YAML (default: fashion-mnist-shift)"
    parser.add_argument("--recipe", default="fashion-mnist-shift", help=recipe_help)
    parser.add_argument("--model", help="a model with shift layers (default: the recipe's shiftresnet20_ssl)")
    parser.add_argument("--data-dir", help="dataset folder")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the recipe's)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    add_output_options(parser, f"folder for the runs and tables (default: {output})")
    parser.set_defaults(output=output)
    add_set_option(parser, "override any training setting, e.g. --set shift_norm=l1")


def _config(args: argparse.Namespace) -> TrainConfig:
    settings = given_settings(args, ("model", "data_dir", "epochs", "device"))
    return load_config(args.recipe, {**parse_overrides(args.set), **settings})


def _environment_text(args: argparse.Namespace) -> tuple[dict, str]:
    from shufflenet.bench.report import environment, environment_markdown

    env = environment(args.command_line)
    return env, environment_markdown(env)


def run_sweep(args: argparse.Namespace) -> int:
    from shufflenet.train import shift_experiments as experiments

    config = _config(args)
    runs = experiments.lambda_sweep(config, args.lambdas, Path(args.output))
    env, env_text = _environment_text(args)
    text = experiments.sweep_report(config, runs, env_text)
    experiments.write_report(Path(args.output), "shift_sweep", text, runs, env)
    print(text)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from shufflenet.train import shift_experiments as experiments

    config = _config(args)
    output = Path(args.output)
    if args.ranking:
        ranking = experiments.ranking_from_run(Path(args.ranking))
    else:
        ranking_run = experiments.lambda_sweep(config, [args.ranking_lambda], output / "ranking")[0]
        ranking = list(ranking_run.sparsity)
    runs = experiments.removal_study(config, ranking, args.counts, output)
    env, env_text = _environment_text(args)
    text = experiments.removal_report(config, ranking, runs, env_text)
    experiments.write_report(output, "shift_removal", text, runs, env)
    print(text)
    return 0


def run_sparsity(args: argparse.Namespace) -> int:
    from shufflenet.ops import shift_sparsity, sparsity_table
    from shufflenet.train.evaluate import load_for_evaluation

    model, name, _ = load_for_evaluation(args.checkpoint)
    rows = shift_sparsity(model)
    if not rows:
        raise CliError(f"{name} has no shift layers; this report is for SSL / grouped-shift models")
    print(sparsity_table(rows))
    return 0


COMMAND = Command(
    "shift",
    "the sparse-shift ablations: lambda sweep, shift-layer removal, sparsity report",
    "The Sparse Shift Layer ablations of Chen et al. 2019 (Tables 1-3) as training runs on any dataset the "
    "pipeline reads (default recipe: ShiftResNet-20 SSL on Fashion-MNIST, a few epochs).",
    subcommands=(
        Command("sweep", "Table 1: accuracy and shift sparsity for several shift-loss weights lambda",
                SWEEP_DESCRIPTION, add_sweep_arguments, run_sweep),
        Command("remove", "Tables 2-3: remove the least important shift layers and retrain",
                REMOVE_DESCRIPTION, add_remove_arguments, run_remove),
        Command("sparsity", "Table 2 of a trained model: unshifted / total channels per shift layer",
                "Per shift layer of a trained model: unshifted channels / channels (Chen et al. 2019, "
                "Table 2).", add_sparsity_arguments, run_sparsity),
    ),
)  # fmt: skip
