//! Builds the XDP program and puts the object in OUT_DIR for `include_bytes_aligned!`.
//! `LB_EBPF_OBJECT=/path/to/object` uses a prebuilt object instead.

#[path = "build/ebpf.rs"]
mod ebpf;

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("lb-ebpf.o");
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    for p in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-common/src", "lb-common/Cargo.toml", "lb-agent/build/ebpf.rs"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let obj = match std::env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => match ebpf::build(&root.join("lb-ebpf"), &root.join("target").join("bpf")) {
            Ok(p) => p,
            Err(e) => panic!("lb-ebpf: {e}"),
        },
    };
    std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", obj.display(), out.display()));
}
