//! Bearer tokens on the gRPC API, seen by NVIDIA's `tritonclient` (the venv
//! `scripts/deps.sh --test` makes, as `kserve_client.rs` uses): `ServerLive` stays open,
//! `ModelMetadata` answers `UNAUTHENTICATED` without a token or with a wrong one, and
//! answers with the right one (sent as the `authorization` metadata entry).

use jigsaw_agent::dataplane::auth::TokenFile;
use jigsaw_agent::dataplane::{grpc, AppMeta, Inference, ServeError, TensorMeta};
use jigsaw_agent::transport::net::BoxFuture;
use jigsaw_protocol::infer::{InferRequest, InferResponse};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// One app, `det`, that never gets to infer here.
struct Meta;

impl Inference for Meta {
    fn ready(&self) -> bool {
        true
    }
    fn apps(&self) -> Vec<String> {
        vec!["det".into()]
    }
    fn app(&self, app: &str) -> Option<AppMeta> {
        (app == "det").then(|| AppMeta {
            name: "det".into(),
            versions: vec!["1".into()],
            platform: "jigsaw".into(),
            inputs: vec![TensorMeta { name: "image".into(), datatype: "FP32".into(), shape: vec![-1, 4] }],
            outputs: vec![],
            latency_slo_ms: 100.0,
        })
    }
    fn infer(&self, _: &str, _: InferRequest, _: Option<Duration>) -> BoxFuture<Result<InferResponse, ServeError>> {
        Box::pin(std::future::ready(Err(ServeError::Failed("not here".into()))))
    }
}

/// The venv's python with tritonclient (`JIGSAW_VENV`, default `~/.cache/jigsaw/venv`).
fn triton_python() -> PathBuf {
    let venv = std::env::var_os("JIGSAW_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/jigsaw/venv"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py).args(["-c", "import tritonclient.grpc"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import tritonclient: run scripts/deps.sh --test", py.display());
    py
}

const CLIENT: &str = r#"
import sys
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
c = g.InferenceServerClient(sys.argv[1])
assert c.is_server_live(), "ServerLive needs no token"
for headers in [None, {"authorization": "Bearer not-a-listed-token-000"}]:
    try:
        c.get_model_metadata("det", headers=headers)
        sys.exit(f"metadata answered with headers {headers}")
    except InferenceServerException as e:
        assert "UNAUTHENTICATED" in str(e.status()), (headers, e.status(), e)
m = c.get_model_metadata("det", headers={"authorization": "Bearer " + sys.argv[2]})
assert m.name == "det", m
print("grpc tokens: ok")
"#;

#[test]
fn grpc_metadata_needs_a_bearer_token_and_live_does_not() {
    let py = triton_python();
    let dir = std::env::temp_dir().join(format!("jigsaw-grpc-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tokens");
    let token = "grpc-token-0123456789abcdef";
    std::fs::write(&path, format!("{token}\n")).expect("tokens");
    let tokens = Arc::new(TokenFile::load(&path).expect("token file"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(grpc::serve_with(listener, Arc::new(Meta), Some(tokens), async move {
        let _ = stopped.await;
    }));
    let out = Command::new(&py).args(["-c", CLIENT, &addr.to_string(), token]).output().expect("python");
    let _ = stop.send(());
    let _ = rt.block_on(server);
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("grpc tokens: ok"), "tritonclient: {text}");
}
