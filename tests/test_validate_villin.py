"""scripts/validate_villin.py (make validate-villin): the verdict can fail, and missing data is a clear error."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("validate_villin", ROOT / "scripts" / "validate_villin.py")
vv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vv)


def _summary(rmsd, rg, q, stationary, rg_ref=9.22):
    return {"observables": {"rmsd": {"sim": {"mean": rmsd}}, "q": {"sim": {"mean": q}},
                            "rg": {"sim": {"mean": rg}, "ref": {"mean": rg_ref}}},
            "stationarity": {"stationary": stationary, "reasons": [] if stationary else ["drift"]}}


def test_native_run_passes():
    assert vv.check(_summary(1.5, 9.3, 0.9, True))["passed"]


def test_each_target_can_fail():
    # the measured runs: the prior alone unfolds, the trained model collapses (README)
    for s, key in [(_summary(3.94, 9.22, 0.9, True), "rmsd"), (_summary(1.5, 7.69, 0.9, True), "rg"),
                   (_summary(1.5, 13.48, 0.9, True), "rg"), (_summary(1.5, 9.22, 0.77, True), "q"),
                   (_summary(1.5, 9.22, 0.9, False), "stationary")]:
        r = vv.check(s)
        assert not r["passed"] and not r[key]["ok"], key
    assert not vv.check({"observables": _summary(1, 9.22, 0.9, True)["observables"]})["passed"]  # no section


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert vv.main(["--data", str(tmp_path / "absent"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "mdcath_dataset_villinHP35.h5" in err and "--data" in err
