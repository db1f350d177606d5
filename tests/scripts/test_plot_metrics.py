"""scripts/plot_metrics.py: metrics.jsonl -> learning-curve PNG."""
import json

from scripts import plot_metrics


def _write_metrics(path, epochs=3, steps_per_epoch=4, ema=True):
    lines = []
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            lines.append({"kind": "step", "epoch": epoch, "step": step, "lr": 1e-3 / step, "loss": 5.0 / step})
        rec = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": 2.0, "val_loss": 2.5,
               "top1_err": 90.0 - epoch, "top5_err": 50.0}
        if ema:
            rec["ema_top1_err"] = 91.0 - epoch
        lines.append(rec)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_read_metrics_keeps_last_record_per_step_and_skips_cut_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path)
    with open(path, "a") as f:  # a resumed run repeats epoch 2 with other values, after a line cut by a kill
        f.write('{"kind": "step", "ep\n')
        f.write(json.dumps({"kind": "step", "epoch": 2, "step": 9, "lr": 7.0, "loss": 8.0}) + "\n")
        f.write(json.dumps({"kind": "epoch", "epoch": 2, "step": 12, "top1_err": 1.0, "val_loss": None}) + "\n")
    steps, epochs, bad = plot_metrics.read_metrics(str(path))
    assert bad == 1
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert steps[8]["lr"] == 7.0
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and epochs[2]["top1_err"] == 1.0
    assert plot_metrics._series(epochs, "step", "val_loss") == ([4, 8], [2.5, 2.5])


def test_writes_png_to_default_and_given_path(tmp_path, capsys):
    _write_metrics(tmp_path / "metrics.jsonl")
    assert plot_metrics.main([str(tmp_path)]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    out = tmp_path / "other.png"
    assert plot_metrics.main([str(tmp_path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_or_empty_metrics_fail_clearly(tmp_path, capsys):
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert "no step or epoch records" in capsys.readouterr().err


def test_panels_hold_every_curve(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path)
    steps, epochs, _ = plot_metrics.read_metrics(str(path))
    fig = plot_metrics.plot_curves(steps, epochs, str(tmp_path / "c.png"))
    loss, lr, err = fig.axes
    assert [ln.get_label() for ln in loss.lines] == ["train loss (step)", "train loss (epoch)", "val loss"]
    assert list(lr.lines[0].get_ydata()) == [1e-3 / s for s in range(1, 13)]
    assert [ln.get_label() for ln in err.lines] == ["val top-1 err", "ema top1 err"]
    assert list(err.lines[1].get_ydata()) == [91.0, 90.0, 89.0]
