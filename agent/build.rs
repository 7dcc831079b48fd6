//! Generates the KServe v2 gRPC server types from `proto/kserve_v2.proto` with the protoc
//! binary that `protoc-bin-vendored` ships (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kserve_v2.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().build_client(false).compile_protos(&["proto/kserve_v2.proto"], &["proto"])?;
    Ok(())
}
