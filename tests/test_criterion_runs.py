"""capslib.book.criterion_runs: the training signal at initialisation against each decisive run's outcome."""
from __future__ import annotations

import json

import pandas as pd

from capslib.book.criterion_runs import criterion_figure, criterion_table, rule_check


def _write(root, rows, screen):
    (root / "collapse").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "collapse" / "cpu.csv", index=False)
    pd.DataFrame(screen).to_csv(root / "collapse" / "screen_cpu.csv", index=False)


def test_runs_join_their_own_screen_or_their_logged_first_step(tmp_path):
    sig = {"groups": {"class": {"update_max": 3e-3}, "primary": {"update_max": 5e-2}}, "lengths": {"class_max": 0.4}}
    rows = [dict(status="ok", stage="train", config_hash="aaa", seed=0, label="dead", test_acc=0.099, history="[]"),
            dict(status="ok", stage="train", config_hash="bbb", seed=0, label="alive", test_acc=0.70, history="[]"),
            dict(status="ok", stage="retrain", config_hash="ccc", seed=1, label="pruned", test_acc=0.58,
                 history=json.dumps([{"signal": sig}])),
            dict(status="failed", stage="train", config_hash="ddd", seed=0, label="crashed", test_acc=0.1,
                 history="[]")]
    screen = [dict(config_hash="aaa", batch=0, **{"update_max.all": 0.0}, class_max=0.0),
              dict(config_hash="aaa", batch=1, **{"update_max.all": 9.0}, class_max=0.0),  # not the first batch
              dict(config_hash="bbb", batch=0, **{"update_max.all": 2e-2}, class_max=0.9)]
    _write(tmp_path, rows, screen)
    t = criterion_table(tmp_path).set_index("label")
    assert list(t.index) == ["dead", "alive", "pruned"]
    assert t.loc["dead", "update_max"] == 0.0 and t.loc["dead", "at_chance"] and t.loc["dead", "source"] == "screen"
    assert t.loc["alive", "update_max"] == 2e-2 and not t.loc["alive", "at_chance"]
    assert t.loc["pruned", "update_max"] == 5e-2 and t.loc["pruned", "source"] == "fit log"
    r = rule_check(t.reset_index())
    assert (r["runs"], r["below"], r["at_chance"], len(r["refuting"])) == (3, 1, 1, 0)
    assert r["largest_dead"] == 0.0 and r["smallest_alive"] == 2e-2


def test_a_run_that_breaks_the_rule_is_named():
    t = pd.DataFrame([dict(study="collapse_h", label="odd", seed=2, dtype="float32", update_max=1e-2, test_acc=10.0,
                           at_chance=True),
                      dict(study="collapse", label="ok", seed=0, dtype="float64", update_max=0.0, test_acc=9.9,
                           at_chance=True)])
    r = rule_check(t)
    assert r["refuting"].empty and list(r["not_sufficient"]["label"]) == ["odd"]
    r = rule_check(t.assign(update_max=[1e-9, 0.0], at_chance=[False, True]))
    assert list(r["refuting"]["label"]) == ["odd"] and r["not_sufficient"].empty
    fig = criterion_figure(t.assign(epochs=1))
    assert len(fig.axes[0].collections) >= 2  # one marker set per dtype


def test_rebuilt_nets_show_both_batchnorm_modes_beside_the_committed_base(tmp_path):
    from capslib.book.criterion_runs import rebuilt_table, rebuilt_text, rebuilt_view

    train = {"primary": 0.4, "inter1": 0.3, "inter4": 0.2, "inter7": 0.06, "class_max": 0.97}
    ev = {"primary": 0.05, "inter1": 3e-3, "inter4": 1e-23, "inter7": 0.0, "class_max": 0.0}
    screen = [dict(label="pruned", seed=s, batch=b, lengths=json.dumps(train), eval_lengths=json.dumps(ev),
                   **{"update_max.all": 0.06 + s / 100}, base_test_acc=0.35) for s in range(3) for b in range(2)]
    rows = [dict(status="ok", stage="base", label="pruned", seed=s, test_acc=0.30 + s / 100) for s in range(3)]
    _write(tmp_path, rows, [])
    pd.DataFrame(screen).to_csv(tmp_path / "collapse" / "screen_rebuilt_cpu.csv", index=False)
    t = rebuilt_table(tmp_path)
    assert len(t) == 6 and set(t["mode"]) == {"train", "eval"}  # batch 0 only, two modes per seed
    assert t[t["mode"] == "eval"]["update_max"].isna().all()
    assert list(t[t["mode"] == "train"]["base_committed"]) == [30.0, 31.0, 32.0]
    v = rebuilt_view(t)
    assert v.loc[("pruned", "eval"), "inter7"] == "0" and v.loc[("pruned", "train"), "primary"] == "0.4"
    assert v.loc[("pruned", "train"), "largest first Adam step (min over seeds)"] == "0.06"
    text = rebuilt_text(t)
    assert "PrimaryCaps 0.4 in training mode against 0.05 in eval mode (× 0.12)" in text and "up to 5.0 points" in text
    assert "full-size (at least 0.06)" in text
    assert "not been screened" in rebuilt_text(rebuilt_table(tmp_path / "nowhere"))
