//! The fuzz targets' checks on a stable toolchain, for CI: random inputs from
//! a seeded generator (and every file of the corpus directories, when they
//! exist) for a set time, on several threads at once. A contract break prints
//! the input and exits 1; a crash kills the process.
//!
//!     cargo run --release --manifest-path fuzz/Cargo.toml --bin contract -- [SECONDS] [THREADS]

use std::time::{Duration, Instant};

/// A small valid safetensors file, which random edits then damage.
fn valid_checkpoint() -> Vec<u8> {
    let header = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"i":{"dtype":"I32","shape":[1],"data_offsets":[16,20]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0u8; 20]);
    file
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("SECONDS and THREADS are numbers"));
    let seconds = args.next().unwrap_or(30);
    let threads = args.next().unwrap_or(2);
    let corpus = |target: &str| -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| std::fs::read(e.ok()?.path()).ok()).collect()).unwrap_or_default()
    };
    let (abi_corpus, checkpoint_corpus) = (corpus("abi"), corpus("safetensors"));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (abi_corpus, checkpoint_corpus) = (abi_corpus.clone(), checkpoint_corpus.clone());
            std::thread::spawn(move || {
                let scratch = std::env::temp_dir().join(format!("cudann-contract-{}-{t}.safetensors", std::process::id()));
                let mut state = 0x2545_F491_4F6C_DD1Du64 ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                let report = |what: &str, input: &[u8], broken: String| -> ! {
                    eprintln!("contract broken ({what}): {broken}\ninput: {input:02x?}");
                    std::process::exit(1);
                };
                let mut runs = 0u64;
                for input in &abi_corpus {
                    cudann_fuzz::check_call(input).unwrap_or_else(|b| report("abi corpus", input, format!("{b}\n{}", cudann_fuzz::explain(input))));
                }
                for input in &checkpoint_corpus {
                    cudann_fuzz::check_checkpoint(input, &scratch).unwrap_or_else(|b| report("safetensors corpus", input, b));
                }
                while Instant::now() < deadline {
                    let input: Vec<u8> = (0..8 + next() % 120).map(|_| next() as u8).collect();
                    cudann_fuzz::check_call(&input).unwrap_or_else(|b| report("abi", &input, format!("{b}\n{}", cudann_fuzz::explain(&input))));
                    runs += 1;
                    if runs % 64 == 0 {
                        let mut file = valid_checkpoint();
                        for _ in 0..next() % 4 {
                            let at = (next() as usize) % file.len();
                            file[at] = next() as u8;
                        }
                        file.truncate(file.len() - (next() as usize % 3) * (next() as usize % 8));
                        cudann_fuzz::check_checkpoint(&file, &scratch).unwrap_or_else(|b| report("safetensors", &file, b));
                    }
                }
                let _ = std::fs::remove_file(&scratch);
                runs
            })
        })
        .collect();
    let runs: u64 = workers.into_iter().map(|w| w.join().expect("a worker")).sum();
    println!("contract: {runs} calls over {} entry points on {threads} threads in {seconds} s, 0 broken", cudann_fuzz::ENTRY_POINTS.len());
}
