"""A real KServe v2 gRPC client against a jigsaw frontend: tritonclient.grpc (PyPI).

Usage: python kserve_grpc.py HOST:PORT APP
Checks health, server and model metadata and inference over gRPC; prints one line per
check and exits non-zero on the first failure.
"""
import sys

import numpy as np
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException


def main():
    url, app = sys.argv[1], sys.argv[2]
    c = grpc.InferenceServerClient(url=url)
    assert c.is_server_live(), "server not live"
    assert c.is_server_ready(), "server not ready"
    assert c.is_model_ready(app), f"{app} not ready"
    server = c.get_server_metadata(as_json=True)
    assert server["name"] == "jigsaw", server
    print("grpc health and server metadata: ok", server)
    meta = c.get_model_metadata(app, as_json=True)
    inp = meta["inputs"][0]
    shape = [1 if int(d) < 0 else int(d) for d in inp["shape"]]
    outputs = [o["name"] for o in meta["outputs"]]
    print("grpc model metadata: ok", inp["name"], shape, outputs)
    i = grpc.InferInput(inp["name"], shape, inp["datatype"])
    i.set_data_from_numpy(np.full(shape, 0.5, dtype=np.float32))
    r = c.infer(app, [i], outputs=[grpc.InferRequestedOutput(o) for o in outputs], request_id="g1")
    for o in outputs:
        y = r.as_numpy(o)
        assert y is not None and y.size > 0 and np.all(np.isfinite(y)), f"{o}: {y}"
    assert r.get_response().id == "g1"
    print("grpc infer: ok", {o: r.as_numpy(o).shape for o in outputs})
    try:
        c.get_model_metadata("no-such-app")
        raise AssertionError("an unknown app must be an error")
    except InferenceServerException as e:
        assert "StatusCode.NOT_FOUND" in str(e.status()), e
        print("grpc unknown app: ok", e.status())


if __name__ == "__main__":
    main()
