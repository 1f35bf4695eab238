# Helpers of the toy experiments' rules (experiments.smk): which runs, their settings, their outputs.

EXPERIMENT = config.get("experiment")
TOY = f"{R}/toy"


def toy_runs():
    if EXPERIMENT is None:
        return []
    if EXPERIMENT["variant"] == "sphering":
        return [f"eps{e:g}" for e in EXPERIMENT["epsilons"]]
    return [EXPERIMENT["variant"]]


def toy_settings(wildcards):
    spec = {k: v for k, v in EXPERIMENT.items() if k != "epsilons"}
    if wildcards.run.startswith("eps"):
        spec["epsilon"] = float(wildcards.run[3:])
    return settings(**spec)


def experiment_outputs():
    return [f"{TOY}/results.md", f"{TOY}/results.csv"] + [f"{TOY}/{r}/classes.png" for r in toy_runs()]


TOY_ANNOTATION = dict(ANNOTATION, validation_compounds=[], split_seed=0)


wildcard_constraints:
    run=r"[A-Za-z0-9_.]+",
