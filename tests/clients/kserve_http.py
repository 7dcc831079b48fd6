"""A real KServe v2 client against a jigsaw frontend: NVIDIA's tritonclient (PyPI).

Usage: python kserve_http.py HOST:PORT APP
Checks health, server and model metadata, JSON inference and binary-tensor inference
(tritonclient's default for numpy inputs and outputs); prints one line per check and exits
non-zero on the first failure.
"""
import sys

import numpy as np
import tritonclient.http as http


def main():
    url, app = sys.argv[1], sys.argv[2]
    c = http.InferenceServerClient(url=url, network_timeout=10.0)
    assert c.is_server_live(), "server not live"
    assert c.is_server_ready(), "server not ready"
    assert c.is_model_ready(app), f"{app} not ready"
    server = c.get_server_metadata()
    assert server["name"] == "jigsaw", server
    print("health and server metadata: ok", server)
    meta = c.get_model_metadata(app)
    inp = meta["inputs"][0]
    shape = [1 if d < 0 else d for d in inp["shape"]]
    outputs = [o["name"] for o in meta["outputs"]]
    print("model metadata: ok", inp["name"], shape, outputs)
    x = np.full(shape, 0.5, dtype=np.float32)
    for binary in (False, True):
        i = http.InferInput(inp["name"], shape, inp["datatype"])
        i.set_data_from_numpy(x, binary_data=binary)
        outs = [http.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        r = c.infer(app, [i], outputs=outs, request_id="check-%d" % binary)
        for o in outputs:
            y = r.as_numpy(o)
            assert y is not None and y.size > 0, f"{o}: no data"
            assert np.all(np.isfinite(y)), f"{o}: {y}"
        print("infer (binary_data=%s): ok" % binary, {o: r.as_numpy(o).shape for o in outputs})
    # The default path of the numpy helpers: binary inputs, outputs not named (all binary).
    i = http.InferInput(inp["name"], shape, inp["datatype"])
    i.set_data_from_numpy(x)
    r = c.infer(app, [i])
    assert all(r.as_numpy(o) is not None for o in outputs), r.get_response()
    print("infer (defaults): ok")


if __name__ == "__main__":
    main()
