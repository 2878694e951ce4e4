"""Child process of `bench.startup`: runs `medtune tune` and stops when the first batch starts.

    python -m bench._first_batch LAUNCHED OUT.json -- tune --task ... (medtune's arguments)

LAUNCHED is the parent's `time.time()` just before it started this process. OUT.json gets the
moments (interpreter up, imports done, first training batch) and the seconds of data work
(`datasets.loader.load`: find, decode, resize, cache or read the cache; tf.data set-up).
"""

import time

MAIN = time.time()  # first thing: the interpreter and site packages are up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def main() -> int:
    launched, out = float(sys.argv[1]), sys.argv[2]
    cli_args = sys.argv[sys.argv.index("--") + 1:]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report = {"launched": launched, "main": MAIN, "data_load_s": 0.0, "pipelines_s": 0.0}

    import keras  # what `tune` imports, timed as one: TensorFlow, Keras, Optuna, MLflow, ...

    import datasets.loader
    import search.cli
    import search.study.run  # noqa: F401
    import search.trial.problems

    report["imported"] = time.time()

    def write() -> None:
        with open(out, "w") as f:
            json.dump(report, f)

    load, make_dataset = datasets.loader.load, search.trial.problems.make_dataset

    def timed_load(*args, **kwargs):
        started = time.perf_counter()
        data = load(*args, **kwargs)
        report["data_load_s"] += time.perf_counter() - started
        report["from_cache"] = data.from_cache
        report["n_images"] = len(data.y_train) + len(data.y_val)
        return data

    def timed_make_dataset(*args, **kwargs):
        started = time.perf_counter()
        try:
            return make_dataset(*args, **kwargs)
        finally:
            report["pipelines_s"] += time.perf_counter() - started

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            report["first_batch"] = time.time()
            write()
            sys.stdout.flush()
            os._exit(0)  # the rest of the study is not what this measures

    fit = keras.Model.fit

    def fit_until_first_batch(self, *args, callbacks=None, **kwargs):
        return fit(self, *args, callbacks=[*(callbacks or []), FirstBatch()], **kwargs)

    datasets.loader.load = timed_load
    search.trial.problems.make_dataset = timed_make_dataset
    keras.Model.fit = fit_until_first_batch
    code = search.cli.main(cli_args)
    report["error"] = f"medtune tune ended (exit {code}) before a training batch started"
    write()
    return 1


if __name__ == "__main__":
    sys.exit(main())
