//! The committed PTX loads on CUDA 12.4+ drivers and defines every kernel the
//! Rust side launches.

#[test]
fn ptx_targets_old_drivers_and_defines_every_launched_kernel() {
    for (module, ptx, kernels, capability) in cudann::gpu::kernels::MODULES {
        let version = ptx.lines().find_map(|l| l.trim().strip_prefix(".version ")).unwrap_or_else(|| panic!("{module}.ptx has no .version"));
        let (major, minor) = version.trim().split_once('.').expect("major.minor");
        let (major, minor): (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
        assert!((major, minor) <= (8, 4), "{module}.ptx is PTX ISA {version}: CUDA 12.4 drivers load at most 8.4");
        let target = ptx.lines().find_map(|l| l.trim().strip_prefix(".target ")).unwrap_or_else(|| panic!("{module}.ptx has no .target"));
        // compute_70 (every GPU since Volta) unless the module is only loaded on newer GPUs.
        assert_eq!(target.trim(), format!("sm_{capability}"), "{module}.ptx must target what MODULES says it needs");
        assert!([70, 80, 90].contains(capability), "{module}: unexpected capability {capability}");
        for kernel in *kernels {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "{module}.ptx does not define {kernel}");
        }
    }
}
