//! aarch64 paths: NEON (always present on aarch64) and NEON with the dot-product extension.

pub mod gemm;
pub mod neon;

pub fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

pub fn features() -> Vec<&'static str> {
    let mut f = vec!["neon"];
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        f.push("dotprod");
    }
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        f.push("i8mm");
    }
    if std::arch::is_aarch64_feature_detected!("fp16") {
        f.push("fp16");
    }
    f
}
