"""loss.tsv and loss.png: the training and validation loss of a run, one row per logged step."""

from __future__ import annotations

import csv
from pathlib import Path

LOSS_COLUMNS = ("step", "epoch", "train_loss", "lll", "detail", "val_loss", "lr", "seconds")


class LossLog:
    """loss.tsv and loss.png in the output folder (rank 0 only)."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.path = output_dir / "loss.tsv"
        self.plot_path = output_dir / "loss.png"
        self.enabled = enabled

    def start(self, resumed_step: int) -> None:
        """Keep the rows up to the resumed step (a crash may have logged steps the checkpoint does not hold)."""
        if not self.enabled:
            return
        rows = self.read() if resumed_step and self.path.exists() else []
        with self.path.open("w", newline="") as stream:
            writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
            writer.writerow(LOSS_COLUMNS)
            writer.writerows([row[c] for c in LOSS_COLUMNS] for row in rows if int(row["step"]) <= resumed_step)

    def read(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as stream:
            return list(csv.DictReader(stream, delimiter="\t"))

    def append(self, row: dict[str, float | int | None]) -> None:
        if not self.enabled:
            return
        formatted = []
        for column in LOSS_COLUMNS:
            value = row.get(column)
            if value is None:
                formatted.append("")
            elif isinstance(value, int):
                formatted.append(str(value))
            else:
                formatted.append(f"{value:.8g}")
        with self.path.open("a") as stream:
            stream.write("\t".join(formatted) + "\n")

    def plot(self) -> None:
        if not self.enabled or not self.path.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        if not rows:
            return
        steps = [int(row["step"]) for row in rows]
        train = [float(row["train_loss"]) for row in rows]
        validation = [(int(row["step"]), float(row["val_loss"])) for row in rows if row["val_loss"]]
        figure, axes = plt.subplots(figsize=(7, 4))
        axes.plot(steps, train, label="training loss", linewidth=1)
        if validation:
            axes.plot(*zip(*validation), "o-", label="validation loss", markersize=3)
        axes.set_yscale("log")
        axes.set_xlabel("optimisation step")
        axes.set_ylabel("flow-matching loss")
        axes.legend()
        axes.grid(alpha=0.3, which="both")
        figure.tight_layout()
        figure.savefig(self.plot_path, dpi=120)
        plt.close(figure)
