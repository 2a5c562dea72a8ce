//! The node's long-lived tasks (the roles, transaction gossip, the beacon, the metrics
//! endpoint), watched. Each runs for as long as the node does, so one that ends, by returning
//! or by panicking, leaves the node unable to do part of its work: `trellis run` then stops
//! with that task's name and cause and a non-zero exit, instead of carrying on without it.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// Why a watched task is no longer running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {task} task stopped: {cause}")]
pub struct TaskStopped {
    pub task: &'static str,
    pub cause: String,
}

/// A set of tasks that must all run until the node stops.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// Runs `task` on the runtime under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits until a task stops and says which and why; never resolves while all run (or when
    /// there are none).
    pub async fn first_stopped(&mut self) -> TaskStopped {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        match ended {
            Ok((id, ())) => TaskStopped { task: self.name(id), cause: "it returned".into() },
            Err(error) => {
                let task = self.name(error.id());
                let cause = if error.is_panic() {
                    let payload = error.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    format!("it panicked: {message}")
                } else {
                    "it was cancelled".into()
                };
                TaskStopped { task, cause }
            }
        }
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unnamed")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_named_with_its_message() {
        let mut supervisor = Supervisor::default();
        supervisor.spawn("steady", std::future::pending());
        supervisor.spawn("miner role", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("the stage directory vanished");
        });
        let stopped = tokio::time::timeout(Duration::from_secs(5), supervisor.first_stopped()).await.unwrap();
        assert_eq!(stopped.task, "miner role");
        assert_eq!(stopped.cause, "it panicked: the stage directory vanished");
    }

    #[tokio::test]
    async fn a_task_that_returns_is_reported_and_running_ones_are_not() {
        let mut supervisor = Supervisor::default();
        supervisor.spawn("steady", std::future::pending());
        supervisor.spawn("gossip", async {});
        let stopped = tokio::time::timeout(Duration::from_secs(5), supervisor.first_stopped()).await.unwrap();
        assert_eq!(stopped, TaskStopped { task: "gossip", cause: "it returned".into() });
        let still = tokio::time::timeout(Duration::from_millis(100), supervisor.first_stopped()).await;
        assert!(still.is_err(), "the steady task is still running: nothing more to report");
    }
}
