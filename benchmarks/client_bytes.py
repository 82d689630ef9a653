"""Every byte leaves the client once: data that starts on the client, on real workloads.

Three workloads whose data is held by the client (arrays made here, scattered data), run
side by side in one run on ``LambdaClient(backend="local")`` and on
``LocalCluster(n_workers=2, threads_per_worker=1)`` (the same results are checked):

``xarray anomaly``
    3 years of daily float32 data on a 90 x 180 grid (71 MB, made here), chunked by 30 days
    (``Dataset.chunk``); the monthly climatology (``groupby("time.month").mean()``) is
    subtracted (``groupby - climatology``) and the anomaly's mean over time computed.
``image labels``
    a 1024 x 1024 float image of 96 bright spots on noise (8 MB, made here) in 256 x 256
    chunks: a smoothing ``map_overlap`` (``scipy.ndimage.gaussian_filter``), then in each
    block the spots' labels (``scipy.ndimage.label``) and the mean intensity of each in the
    original image (``ndimage.mean``): every chunk of the image is read by the overlap tasks
    of its neighbours and by its own labelling task.
``scattered array``
    one 64 MB array ``client.scatter``-ed and used by 6 tasks (column sums of 6 slices).

For each it prints the bytes the client process sent (jobs, inline and through S3, and
values it uploaded once: ``lambda_stats()["bytes_sent"]``) divided by the size of the
data the client held (the goal: at most 1.1), the bytes that referencing uploaded values
saved (``shared_bytes_saved``: what would have been sent again), and the wall time next
to LocalCluster's (the goal: at most 1.5x on the local backend).

Run: ``python benchmarks/client_bytes.py`` (``--quick``: smaller data, for the test suite;
``--json PATH``: write the figures).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _env import banner, environment, write_json


def xarray_anomaly(quick: bool) -> tuple[Callable[[Any], Any], int]:
    import pandas as pd
    import xarray as xr

    days, lat, lon = (180, 30, 60) if quick else (1095, 90, 180)
    values = np.random.default_rng(0).standard_normal((days, lat, lon)).astype("float32")
    ds = xr.Dataset({"t": (("time", "lat", "lon"), values)},
                    coords={"time": pd.date_range("2000-01-01", periods=days)})

    def run(client: Any) -> Any:
        chunked = ds.chunk({"time": 30})
        climatology = chunked.groupby("time.month").mean()
        anomaly = chunked.groupby("time.month") - climatology
        return anomaly.t.mean("time").compute().values

    return run, values.nbytes


def image_labels(quick: bool) -> tuple[Callable[[Any], Any], int]:
    import dask.array as da
    from scipy import ndimage

    side, spots = (256, 12) if quick else (1024, 96)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:side, :side]
    image = 0.1 * rng.random((side, side))  # noise, and bright spots: one label each or so
    for cy, cx in rng.integers(16, side - 16, size=(spots, 2)):
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 128) ** 2))

    def smooth(block: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(block, 4)

    def label_means(smoothed: np.ndarray, original: np.ndarray) -> np.ndarray:
        labels, count = ndimage.label(smoothed > 0.05)
        if not count:
            return np.zeros(0)
        return np.asarray(ndimage.mean(original, labels, np.arange(1, count + 1)))

    def run(client: Any) -> Any:
        x = da.from_array(image, chunks=side // 4)
        smoothed = x.map_overlap(smooth, depth=8, boundary="reflect")
        means = [da.map_blocks(label_means, smoothed.blocks[i, j], x.blocks[i, j],
                               dtype=float, drop_axis=1, chunks=(np.nan,))
                 for i in range(4) for j in range(4)]  # the mean intensity of each spot
        return np.sort(np.concatenate(da.compute(*means)))

    return run, image.nbytes


def scattered_array(quick: bool) -> tuple[Callable[[Any], Any], int]:
    rows = 1024 if quick else 8192
    data = np.random.default_rng(2).random((rows, 1024))  # 64 MB at full size

    def part_sum(array: np.ndarray, i: int) -> np.ndarray:
        return array[i::6].sum(axis=0)

    def run(client: Any) -> Any:
        # hash=False: a key of its own each run (scattering the same data again under the same
        # key races with the release of the last run's, in distributed, with any cluster); a
        # copy: the same object again would be found still uploaded (its last key not yet
        # released), and the timed run would send nothing
        [future] = client.scatter([data.copy()], broadcast=True, hash=False)
        return np.sum(client.gather([client.submit(part_sum, future, i) for i in range(6)]),
                      axis=0)

    return run, data.nbytes


WORKLOADS = {"xarray anomaly": xarray_anomaly, "image labels": image_labels,
             "scattered array": scattered_array}


def measure(name: str, quick: bool) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from dask_lambda import LambdaClient

    run, held = WORKLOADS[name](quick)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      processes=True) as cluster, Client(cluster) as client:
        run(client)  # workers warm, imports done
        t0 = time.perf_counter()
        expected = run(client)
        local_s = time.perf_counter() - t0
    with LambdaClient("s3://client-bytes", concurrency=2, dashboard_address=None) as client:
        run(client)  # execution environments warm
        before = client.lambda_stats()
        t0 = time.perf_counter()
        got = run(client)
        lambda_s = time.perf_counter() - t0
        after = client.lambda_stats()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    sent = after["bytes_sent"] - before["bytes_sent"]
    saved = after.get("shared_bytes_saved", 0) - before.get("shared_bytes_saved", 0)
    return {"workload": name, "client_data_bytes": held, "bytes_sent": sent,
            "sent_per_data": sent / held, "shared_bytes_saved": saved,
            "lambda_s": lambda_s, "localcluster_s": local_s, "time_ratio": lambda_s / local_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data (for the tests)")
    parser.add_argument("--only", choices=sorted(WORKLOADS), default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    env = environment()
    print(banner("client bytes", env, "local backend, concurrency 2, next to "
                 "LocalCluster(n_workers=2, threads_per_worker=1); second runs, warm"))
    rows = [measure(name, args.quick) for name in WORKLOADS if args.only in (None, name)]
    print(f"\n{'workload':18} {'client data':>12} {'sent':>12} {'sent/data':>10} "
          f"{'saved':>12} {'LambdaClient':>13} {'LocalCluster':>13} {'ratio':>6}")
    for r in rows:
        print(f"{r['workload']:18} {r['client_data_bytes'] / 1e6:10.1f}MB "
              f"{r['bytes_sent'] / 1e6:10.1f}MB {r['sent_per_data']:10.2f} "
              f"{r['shared_bytes_saved'] / 1e6:10.1f}MB {r['lambda_s']:12.2f}s "
              f"{r['localcluster_s']:12.2f}s {r['time_ratio']:6.2f}")
    bytes_ok = all(r["sent_per_data"] <= 1.1 for r in rows)
    time_ok = all(r["time_ratio"] <= 1.5 for r in rows)
    print(f"\ntargets: bytes sent / client data <= 1.1: {'met' if bytes_ok else 'NOT met'}; "
          f"wall time <= 1.5x LocalCluster: {'met' if time_ok else 'NOT met'}")
    if args.json:
        write_json(args.json, {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()
