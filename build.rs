//! Builds the oneDNN shim (`src/accel/dnnl_shim.cpp`) when the `onednn` feature is on. oneDNN comes from
//! Debian's `libdnnl-dev` (2.6), or from the prefix in `DNNL_DIR` (include/ and lib/, e.g. a venv with
//! PyPI's `onednn-devel-cpu-gomp`).
fn main() {
    println!("cargo:rerun-if-changed=src/accel/dnnl_shim.cpp");
    println!("cargo:rerun-if-env-changed=DNNL_DIR");
    if std::env::var_os("CARGO_FEATURE_ONEDNN").is_none() {
        return;
    }
    let mut build = cc::Build::new();
    build.cpp(true).file("src/accel/dnnl_shim.cpp").flag("-O2").flag("-std=c++17").flag("-fopenmp").warnings(false);
    if let Ok(dir) = std::env::var("DNNL_DIR") {
        build.include(format!("{dir}/include"));
        println!("cargo:rustc-link-search=native={dir}/lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    } else if !std::path::Path::new("/usr/include/oneapi/dnnl/dnnl.hpp").exists() {
        panic!(
            "feature `onednn` needs oneDNN's headers: install Debian's libdnnl-dev (`just setup` does), \
             or set DNNL_DIR to a prefix with include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so; \
             or build without the feature (`--no-default-features`)"
        );
    }
    build.compile("emollama_dnnl_shim");
    println!("cargo:rustc-link-lib=dylib=dnnl");
    println!("cargo:rustc-link-lib=dylib=gomp");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}
