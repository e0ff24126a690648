//! Runs a plan's nodes in order, skipping finished ones, so a killed study resumes where it was.
//!
//! A node is finished exactly when `nodes/<id>/done.json` exists; it is written atomically after
//! the node's outputs, so a kill at any point either leaves the node unfinished (it resumes from its
//! own checkpoints) or finished. A lock file keeps two studies from writing one directory at once:
//! a local study holds it alone; Slurm jobs (`vlmix study run-node`) share it and each holds its
//! node's own lock, so parallel jobs run different nodes and never one twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vlmix_atomic_file::write_atomic;

use crate::outputs::NodeOutputs;
use crate::plan::{Node, Plan};

/// What a finished node leaves behind, beside its own files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeDone {
    pub id: String,
    /// Wall seconds of the run that finished it (summed over resumed attempts).
    pub wall_s: f64,
    pub finished_at: String,
    /// Stage-specific outputs (checkpoint paths, scores, token counts).
    pub outputs: NodeOutputs,
}

/// Executes one node; called only when its dependencies are done.
pub trait NodeRunner {
    /// `dir` is the node's own directory (created); `previous_wall_s` is time spent by killed attempts.
    fn run(&mut self, node: &Node, dir: &Path, study: &StudyDir) -> Result<NodeOutputs>;
    /// Called before and after each node, for progress display.
    fn on_progress(&mut self, _finished: usize, _total: usize, _current: Option<&Node>) {}
}

/// A study's run directory.
pub struct StudyDir {
    pub root: PathBuf,
    _lock: File,
}

/// Opens (creating) a lock file without taking the lock: callers choose exclusive or shared.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl StudyDir {
    /// Opens (creating) `root` and takes its lock; fails if another study holds it.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("nodes"))
            .with_context(|| format!("creating run directory {}", root.display()))?;
        let lock_path = root.join(".lock");
        let lock = open_lock_file(&lock_path)?;
        if lock.try_lock().is_err() {
            bail!("{} is in use by another vlmix study (lock {})", root.display(), lock_path.display());
        }
        Ok(Self { root: root.to_owned(), _lock: lock })
    }

    /// Opens an existing run directory beside other jobs of the same study (Slurm); fails while a
    /// local study holds it.
    pub fn open_shared(root: &Path) -> Result<Self> {
        let lock_path = root.join(".lock");
        let lock = open_lock_file(&lock_path)?;
        if lock.try_lock_shared().is_err() {
            bail!("{} is in use by a local vlmix study (lock {})", root.display(), lock_path.display());
        }
        Ok(Self { root: root.to_owned(), _lock: lock })
    }

    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.root.join("nodes").join(id)
    }

    /// The node's record, None while it is unfinished. A record damaged on disk, or one this
    /// version cannot read (outputs from before their stage tag), is reported, set aside as
    /// `done.json.damaged`, and the node counts as unfinished, so it runs again (resuming from its
    /// last good checkpoint) instead of failing the study.
    pub fn done(&self, id: &str) -> Result<Option<NodeDone>> {
        let path = self.node_dir(id).join("done.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        match serde_json::from_slice(&text) {
            Ok(done) => Ok(Some(done)),
            Err(e) => {
                let aside = path.with_extension("json.damaged");
                tracing::warn!(
                    "{}: damaged ({e}); set aside as {}, node {id} runs again",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside).with_context(|| format!("setting {} aside", path.display()))?;
                Ok(None)
            }
        }
    }

    /// The record of `id`, which must be finished (a dependency of the node asking).
    pub fn finished(&self, id: &str) -> Result<NodeDone> {
        self.done(id)?.with_context(|| format!("{id} is not finished"))
    }

    fn mark_done(&self, done: &NodeDone) -> Result<()> {
        let path = self.node_dir(&done.id).join("done.json");
        write_atomic(&path, serde_json::to_string_pretty(done)?.as_bytes())
    }

    /// Wall time spent on a node by earlier, interrupted attempts.
    fn previous_wall(&self, id: &str) -> f64 {
        std::fs::read_to_string(self.node_dir(id).join("wall_s"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn record_wall(&self, id: &str, wall_s: f64) -> Result<()> {
        write_atomic(&self.node_dir(id).join("wall_s"), format!("{wall_s}").as_bytes())
    }
}

/// Runs every unfinished node of `plan` in order. Returns how many nodes ran now.
pub fn execute(plan: &Plan, study: &StudyDir, runner: &mut dyn NodeRunner) -> Result<usize> {
    let total = plan.nodes.len();
    let done = plan.nodes.iter().map(|n| Ok(study.done(&n.id)?.is_some())).collect::<Result<Vec<bool>>>()?;
    let mut finished = done.iter().filter(|&&d| d).count();
    let mut ran = 0;
    for (node, _) in plan.nodes.iter().zip(&done).filter(|(_, &d)| !d) {
        runner.on_progress(finished, total, Some(node));
        execute_node(node, study, runner)?;
        finished += 1;
        ran += 1;
    }
    runner.on_progress(finished, total, None);
    Ok(ran)
}

/// Runs one node whose dependencies are finished, under the node's own lock; `false` when it was
/// already finished.
pub fn execute_node(node: &Node, study: &StudyDir, runner: &mut dyn NodeRunner) -> Result<bool> {
    for dep in &node.after {
        if study.done(dep)?.is_none() {
            bail!("node {} needs {dep}, which is not finished", node.id);
        }
    }
    let dir = study.node_dir(&node.id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The ranks of a data-parallel node run it together; rank 0 holds the lock and records it.
    let world = vlmix_train::distributed::world()?;
    let lock_path = dir.join(".lock");
    let lock = open_lock_file(&lock_path)?;
    if world.is_leader() && lock.try_lock().is_err() {
        bail!("node {} is being run by another process (lock {})", node.id, lock_path.display());
    }
    // Checked again under the lock: another job may have finished it meanwhile.
    if study.done(&node.id)?.is_some() {
        return Ok(false);
    }
    let previous = study.previous_wall(&node.id);
    let start = Instant::now();
    let outputs = runner.run(node, &dir, study).with_context(|| format!("study node {}", node.id));
    if !world.is_leader() {
        return outputs.map(|_| true);
    }
    let wall_s = previous + start.elapsed().as_secs_f64();
    study.record_wall(&node.id, wall_s)?;
    let outputs = outputs?;
    study.mark_done(&NodeDone { id: node.id.clone(), wall_s, finished_at: now_rfc3339(), outputs })?;
    Ok(true)
}

pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("unix:{secs}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::FinetuneOutputs;
    use crate::plan::NodeKind;

    struct Counting {
        runs: Vec<String>,
        fail_on: Option<String>,
    }

    impl NodeRunner for Counting {
        fn run(&mut self, node: &Node, dir: &Path, _study: &StudyDir) -> Result<NodeOutputs> {
            if self.fail_on.as_deref() == Some(&node.id) {
                bail!("simulated crash");
            }
            std::fs::write(dir.join("out.txt"), &node.id)?;
            self.runs.push(node.id.clone());
            Ok(NodeOutputs::Finetune(FinetuneOutputs { epochs: [(1, node.id.clone())].into(), tokens: 1 }))
        }
    }

    fn plan() -> Plan {
        let node = |id: &str, after: &[&str]| Node {
            id: id.into(),
            kind: NodeKind::Pretrain,
            after: after.iter().map(|s| s.to_string()).collect(),
        };
        Plan { nodes: vec![node("a", &[]), node("b", &["a"]), node("c", &["b"])] }
    }

    #[test]
    fn a_failed_study_resumes_skipping_finished_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let study = StudyDir::open(tmp.path()).unwrap();
        let mut runner = Counting { runs: vec![], fail_on: Some("b".into()) };
        let err = execute(&plan(), &study, &mut runner).unwrap_err();
        assert!(format!("{err:#}").contains("study node b"), "{err:#}");
        assert_eq!(runner.runs, vec!["a"]);

        let mut runner = Counting { runs: vec![], fail_on: None };
        assert_eq!(execute(&plan(), &study, &mut runner).unwrap(), 2);
        assert_eq!(runner.runs, vec!["b", "c"]);
        assert_eq!(study.finished("c").unwrap().outputs.finetune("c").unwrap().epoch("c", 1).unwrap(), "c");
        let mut runner = Counting { runs: vec![], fail_on: None };
        assert_eq!(execute(&plan(), &study, &mut runner).unwrap(), 0);
    }

    #[test]
    fn a_damaged_done_record_reruns_its_node_instead_of_failing_the_study() {
        let tmp = tempfile::tempdir().unwrap();
        let study = StudyDir::open(tmp.path()).unwrap();
        execute(&plan(), &study, &mut Counting { runs: vec![], fail_on: None }).unwrap();
        let done = study.node_dir("b").join("done.json");
        let text = std::fs::read(&done).unwrap();
        std::fs::write(&done, &text[..text.len() / 2]).unwrap();
        let mut runner = Counting { runs: vec![], fail_on: None };
        assert_eq!(execute(&plan(), &study, &mut runner).unwrap(), 1);
        assert_eq!(runner.runs, vec!["b"], "only the node whose record was damaged");
        assert!(study.node_dir("b").join("done.json.damaged").is_file(), "set aside for a look");
        assert!(study.finished("b").is_ok());

        // Outputs without their stage tag (run directories written before it) are read the same way.
        let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&done).unwrap()).unwrap();
        record["outputs"].as_object_mut().unwrap().remove("stage").expect("tagged");
        std::fs::write(&done, record.to_string()).unwrap();
        let mut runner = Counting { runs: vec![], fail_on: None };
        assert_eq!(execute(&plan(), &study, &mut runner).unwrap(), 1);
        assert_eq!(runner.runs, vec!["b"]);
    }

    #[test]
    fn slurm_jobs_share_a_run_directory_that_a_local_study_holds_alone() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("nodes")).unwrap();
        let (first, second) = (StudyDir::open_shared(tmp.path()).unwrap(), StudyDir::open_shared(tmp.path()).unwrap());
        assert!(StudyDir::open(tmp.path()).is_err(), "a local study must wait for the jobs");
        drop((first, second));
        let local = StudyDir::open(tmp.path()).unwrap();
        assert!(StudyDir::open_shared(tmp.path()).is_err(), "jobs must not run beside a local study");
        drop(local);
    }

    #[test]
    fn a_second_study_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = StudyDir::open(tmp.path()).unwrap();
        let err = StudyDir::open(tmp.path()).err().expect("second open must fail").to_string();
        assert!(err.contains("in use"), "{err}");
    }
}
