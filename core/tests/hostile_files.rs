//! Side files of a pull in a directory others can write (issue 15, break 3): a
//! symlink planted at OUT.rgtp-part, OUT.rgtp-state or OUT.rgtp-state.tmp must never
//! make a pull read or overwrite the file it points to. Each test fails on the code
//! before the fix (it followed the link).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rgtp::bitset::ChunkSet;
use rgtp::merkle::CHUNK_SIZE;
use rgtp::output::Output;
use rgtp::sidecar::Sidecar;

const VICTIM: &[u8] = b"precious: not yours to overwrite\n";

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("rgtp-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    /// The output path and a victim file elsewhere in the directory.
    fn setup(&self) -> (PathBuf, PathBuf) {
        let victim = self.0.join("victim");
        fs::write(&victim, VICTIM).unwrap();
        (self.0.join("out"), victim)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn side(out: &Path, suffix: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

const SIZE: u64 = 3 * CHUNK_SIZE as u64;

/// Opens, starts, writes a chunk and saves: what a pull does in its first second.
fn pull_into(out: &Path) -> Result<(), String> {
    let (mut o, resume) = Output::open(out).map_err(|e| e.to_string())?;
    let have = resume.map(|r| r.have);
    o.start([7; 32], SIZE, have).map_err(|e| e.to_string())?;
    o.write_chunk(0, vec![0xee; CHUNK_SIZE])
        .map_err(|e| e.to_string())?;
    o.save().map_err(|e| e.to_string())
}

#[test]
fn a_planted_part_file_link_is_refused() {
    let d = Dir::new("part");
    let (out, victim) = d.setup();
    symlink(&victim, side(&out, ".rgtp-part")).unwrap();
    let r = pull_into(&out);
    assert_eq!(
        fs::read(&victim).unwrap(),
        VICTIM,
        "written through the link"
    );
    let err = r.expect_err("a pull through a planted link");
    assert!(err.contains("rgtp-part") && !err.contains('\n'), "{err}");
}

#[test]
fn a_planted_state_file_link_is_not_read() {
    let d = Dir::new("state");
    let (out, victim) = d.setup();
    // The link points at a valid sidecar the attacker wrote, claiming every chunk, and
    // the part file has the right size: followed, the pull would trust it.
    let mut s = Sidecar::new([7; 32], SIZE, CHUNK_SIZE as u32);
    s.have = ChunkSet::full(3);
    let planted = d.0.join("planted-state");
    s.store(&planted).unwrap();
    fs::write(side(&out, ".rgtp-part"), vec![0u8; SIZE as usize]).unwrap();
    symlink(&planted, side(&out, ".rgtp-state")).unwrap();
    let r = Output::open(&out).map(|(_, resume)| resume.is_some());
    assert!(r.is_err(), "the state was read through a link: {r:?}");
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
}

#[test]
fn a_planted_state_tmp_link_is_not_written() {
    let d = Dir::new("tmp");
    let (out, victim) = d.setup();
    symlink(&victim, side(&out, ".rgtp-state.tmp")).unwrap();
    pull_into(&out).expect("the pull goes on (its temporary has another name)");
    assert_eq!(
        fs::read(&victim).unwrap(),
        VICTIM,
        "written through the link"
    );
    assert!(Sidecar::load(&side(&out, ".rgtp-state")).unwrap().is_some());
}

/// The final rename replaces a link at OUT; it never writes through it (this held
/// before too: rename(2) does not follow).
#[test]
fn a_link_at_the_output_is_replaced_not_followed() {
    let d = Dir::new("final");
    let (out, victim) = d.setup();
    symlink(&victim, &out).unwrap();
    let (mut o, _) = Output::open(&out).unwrap();
    o.start([7; 32], SIZE, None).unwrap();
    for i in 0..3 {
        o.write_chunk(i, vec![i as u8; CHUNK_SIZE]).unwrap();
    }
    o.finish().unwrap();
    assert_eq!(fs::read(&victim).unwrap(), VICTIM);
    assert!(!fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
    assert_eq!(fs::metadata(&out).unwrap().len(), SIZE);
}
