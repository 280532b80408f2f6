"""Times a PyTorch reference backbone (mace-torch MACE or nequip-allegro Allegro) on graphs from an .npz.

Runs inside a reference virtualenv (see `setup_venvs.sh`), never in the project venv: it imports only
torch, numpy and the reference package. `benchmarks/bench_reference.py` starts it and talks to it over
stdin/stdout, one JSON object per line, so that our model and the reference can be timed in alternation
under the same machine load:

- on start it builds the model from our hyperparameters (`--hp`, JSON; the mapping is in
  `build_mace` / `build_allegro`), loads the graphs, and prints `{"ready": true, "versions": ...,
  "n_params": ..., "mapping": ...}`;
- request `{"case": "n35", "what": "ef" | "train", "calls": k}`: runs `k` calls and answers
  `{"times_s": [...]}` (wall seconds per call; the first request of a case is the caller's warm-up);
- request `{"quit": true}` ends it.

`ef` = energy and forces (-dE/dR by autograd, no graph kept for a second derivative); `train` = energy,
forces with `create_graph`, the force-MSE loss `sum((F - F_target)^2) / n_beads` and its backward pass to
all parameters (no optimiser step, as on our side).

Standalone use (one-shot JSON instead of the line protocol):
`python torch_driver.py --model mace --graphs g.npz --hp '{...}' --once --repeats 5 --out r.json`
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version

import numpy as np
import torch

N_SPECIES = 20


def load_graphs(path: str) -> dict[str, dict[str, np.ndarray]]:
    """The .npz written by `bench_models.export_graphs`: `<case>/<field>` arrays."""
    raw = np.load(path)
    cases: dict[str, dict[str, np.ndarray]] = {}
    for key in raw.files:
        case, field = key.split("/", 1)
        cases.setdefault(case, {})[field] = raw[key]
    for case, g in cases.items():
        n = len(g["positions"])
        if g["senders"].size and (g["senders"].max() >= n or g["receivers"].max() >= n):
            raise ValueError(f"{path}: case {case!r} has padded edges (index >= {n} beads); "
                             "export unpadded batches")  # fmt: skip
    return cases


def _versions(names: list[str]) -> dict[str, str]:
    out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:  # noqa: BLE001
            out[n] = "?"
    return out


# ----------------------------------------------------------------------------------------------
# MACE (mace-torch)


def build_mace(hp: dict, cutoff: float):
    # e3nn 0.4.4 torch.load()s its own constants.pt, which holds `slice` objects; torch >= 2.6 loads
    # weights-only by default and refuses them unless allow-listed
    torch.serialization.add_safe_globals([slice])
    from e3nn import o3
    from mace.modules import MACE, RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

    model = MACE(
        r_max=cutoff,
        num_bessel=int(hp["n_radial_basis"]),
        num_polynomial_cutoff=int(hp["envelope_p"]),
        max_ell=int(hp["l_max"]),
        # ours: no residual in the first layer (its input is the species embedding), residual after
        interaction_cls_first=RealAgnosticInteractionBlock,
        interaction_cls=RealAgnosticResidualInteractionBlock,
        num_interactions=int(hp["n_layers"]),
        num_elements=N_SPECIES,
        hidden_irreps=o3.Irreps(hp["hidden_irreps"]),
        MLP_irreps=o3.Irreps(f"{int(hp['readout_hidden'])}x0e"),
        gate=torch.nn.functional.silu,
        atomic_energies=np.zeros(N_SPECIES),
        avg_num_neighbors=float(hp["avg_num_neighbors"]),
        atomic_numbers=list(range(1, N_SPECIES + 1)),
        correlation=int(hp["correlation"]),
        radial_MLP=[int(w) for w in hp["radial_hidden"]],
    )
    mapping = {
        "r_max": cutoff, "num_bessel": hp["n_radial_basis"], "num_polynomial_cutoff": hp["envelope_p"],
        "max_ell": hp["l_max"], "num_interactions": hp["n_layers"], "hidden_irreps": hp["hidden_irreps"],
        "MLP_irreps": f"{hp['readout_hidden']}x0e", "correlation": hp["correlation"],
        "radial_MLP": list(hp["radial_hidden"]), "avg_num_neighbors": hp["avg_num_neighbors"],
        "num_elements": N_SPECIES, "interaction_cls_first": "RealAgnosticInteractionBlock",
        "interaction_cls": "RealAgnosticResidualInteractionBlock", "gate": "silu",
    }  # fmt: skip
    return model, mapping


def mace_inputs(g: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    n, e = len(g["positions"]), len(g["senders"])
    gi = torch.as_tensor(g["graph_index"], dtype=torch.long)
    n_graph = int(gi.max()) + 1
    counts = torch.bincount(gi, minlength=n_graph)
    return {
        "positions": torch.as_tensor(g["positions"], dtype=torch.float32),
        "node_attrs": torch.nn.functional.one_hot(torch.as_tensor(g["species"], dtype=torch.long),
                                                  N_SPECIES).to(torch.float32),
        "edge_index": torch.stack([torch.as_tensor(g["senders"], dtype=torch.long),
                                   torch.as_tensor(g["receivers"], dtype=torch.long)]),
        "shifts": torch.zeros((e, 3)), "unit_shifts": torch.zeros((e, 3)),
        "cell": torch.zeros((3 * n_graph, 3)),
        "batch": gi, "ptr": torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]),
        "_n": torch.tensor(n),
    }  # fmt: skip


def mace_calls(model, data, target):
    n = data.pop("_n").item()

    def ef():
        out = model(data, training=False, compute_force=True)
        return out["energy"].detach(), out["forces"].detach()

    def train():
        model.zero_grad(set_to_none=True)
        out = model(data, training=True, compute_force=True)
        loss = torch.sum((out["forces"] - target) ** 2) / n
        loss.backward()
        return loss.detach()

    return ef, train


# ----------------------------------------------------------------------------------------------
# Allegro (nequip + nequip-allegro)


def build_allegro(hp: dict, cutoff: float, compile_mode: str = "eager"):
    from nequip.utils.global_state import set_global_state

    set_global_state()
    from allegro.model import AllegroModel

    def depth_width(hidden, what):
        widths = list(hidden)
        if len(set(widths)) > 1:
            raise ValueError(f"Allegro reference: {what} hidden widths {widths} must be equal")
        return len(widths), (widths[0] if widths else 64)

    tb_d, tb_w = depth_width(hp["two_body_hidden"], "two_body")
    la_d, la_w = depth_width(hp["latent_hidden"], "latent")
    ro_d, ro_w = depth_width(hp["edge_energy_hidden"], "edge_energy")
    kwargs = dict(
        seed=0, model_dtype="float32", compile_mode=compile_mode,
        type_names=[f"S{i}" for i in range(N_SPECIES)],
        r_max=cutoff, l_max=int(hp["l_max"]), parity=bool(hp["parity"]),
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
                               "num_bessels": int(hp["n_radial_basis"]), "bessel_trainable": False,
                               "polynomial_cutoff_p": int(hp["envelope_p"])},
        radial_chemical_embed_dim=tb_w,
        scalar_embed_mlp_hidden_layers_depth=tb_d, scalar_embed_mlp_hidden_layers_width=tb_w,
        num_layers=int(hp["n_layers"]), num_scalar_features=int(hp["latent_dim"]),
        num_tensor_features=int(hp["n_tensor_features"]),
        allegro_mlp_hidden_layers_depth=la_d, allegro_mlp_hidden_layers_width=la_w,
        tp_path_channel_coupling=True,
        readout_mlp_hidden_layers_depth=ro_d, readout_mlp_hidden_layers_width=ro_w,
        avg_num_neighbors=float(hp["avg_num_neighbors"]),
        per_type_energy_scales=1.0, per_type_energy_shifts=0.0,
        per_type_energy_scales_trainable=True, per_type_energy_shifts_trainable=True,
    )  # fmt: skip
    model = AllegroModel(**kwargs)
    mapping = {k: v for k, v in kwargs.items() if k not in ("type_names", "seed")}
    mapping["num_types"] = N_SPECIES
    return model, mapping


def allegro_inputs(g: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    gi = torch.as_tensor(g["graph_index"], dtype=torch.long)
    n_graph = int(gi.max()) + 1
    return {
        "pos": torch.as_tensor(g["positions"], dtype=torch.float32),
        "atom_types": torch.as_tensor(g["species"], dtype=torch.long),
        "edge_index": torch.stack([torch.as_tensor(g["senders"], dtype=torch.long),
                                   torch.as_tensor(g["receivers"], dtype=torch.long)]),
        "batch": gi, "num_atoms": torch.bincount(gi, minlength=n_graph),
    }  # fmt: skip


def allegro_calls(model, data, target):
    n = len(data["pos"])

    def ef():
        model.eval()
        out = model(dict(data))
        return out["total_energy"].detach(), out["forces"].detach()

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(dict(data))
        loss = torch.sum((out["forces"] - target) ** 2) / n
        loss.backward()
        return loss.detach()

    return ef, train


# ----------------------------------------------------------------------------------------------


def setup(args):
    torch.set_num_threads(args.threads)
    hp = json.loads(args.hp)
    t0 = time.perf_counter()
    if args.model == "mace":
        torch.set_default_dtype(torch.float32)
        model, mapping = build_mace(hp, args.cutoff)
        to_inputs, make_calls, pkgs = mace_inputs, mace_calls, ["mace-torch", "e3nn"]
    elif args.model == "allegro":
        model, mapping = build_allegro(hp, args.cutoff, args.compile_mode)
        to_inputs, make_calls, pkgs = allegro_inputs, allegro_calls, ["nequip", "nequip-allegro", "e3nn"]
    else:
        raise SystemExit(f"unknown model {args.model!r} (mace or allegro)")
    build_s = time.perf_counter() - t0
    calls = {}
    for case, g in load_graphs(args.graphs).items():
        data = to_inputs(g)
        target = torch.as_tensor(g["forces"], dtype=torch.float32)
        ef, train = make_calls(model, data, target)
        calls[case] = {"ef": ef, "train": train}
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {"ready": True, "model": args.model, "versions": _versions(pkgs), "n_params": int(n_params),
            "build_s": build_s, "mapping": mapping, "cases": sorted(calls)}  # fmt: skip
    return calls, info


def run_calls(fn, k: int) -> list[float]:
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        out = fn()
        if isinstance(out, tuple):
            out = out[0]
        if not torch.isfinite(out).all():
            raise FloatingPointError("non-finite output")
        ts.append(time.perf_counter() - t)
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=["mace", "allegro"])
    ap.add_argument("--graphs", required=True)
    ap.add_argument("--hp", required=True, help="our model's hyperparameters (JSON)")
    ap.add_argument("--cutoff", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile-mode", default="eager", help="allegro only: nequip compile_mode")
    ap.add_argument("--once", action="store_true", help="time every case once and write --out")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    # the protocol owns stdout; anything the packages print (mace prints on import) goes to stderr
    proto, sys.stdout = sys.stdout, sys.stderr
    calls, info = setup(args)
    if args.once:
        res = dict(info, results={})
        for case, fns in calls.items():
            for what, fn in fns.items():
                first = run_calls(fn, 1)[0]
                run_calls(fn, args.warmup)
                ts = run_calls(fn, args.repeats)
                res["results"][f"{case}/{what}"] = {"first_s": first, "median_s": float(np.median(ts)),
                                                    "times_s": ts}  # fmt: skip
                print(case, what, f"{1e3 * np.median(ts):.1f} ms", file=sys.stderr, flush=True)
        text = json.dumps(res, indent=1)
        if args.out:
            open(args.out, "w").write(text)
        else:
            print(text, file=proto)
        return
    print(json.dumps(info), file=proto, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("quit"):
            break
        try:
            ts = run_calls(calls[req["case"]][req["what"]], int(req.get("calls", 1)))
            print(json.dumps({"times_s": ts}), file=proto, flush=True)
        except Exception as err:  # noqa: BLE001 (reported to the caller)
            print(json.dumps({"error": f"{type(err).__name__}: {err}"}), file=proto, flush=True)


if __name__ == "__main__":
    main()
