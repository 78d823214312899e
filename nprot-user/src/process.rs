//! The process behind a flow: what attribution finds out, policy matches process-scoped
//! indicators against, and events report in their `InitiatingProcess*` columns.

use std::sync::Arc;

use serde::{Serialize, Serializer, ser::SerializeStruct};

/// What is known about the process behind a flow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    /// Process id (thread-group id).
    pub pid: u32,
    /// Parent's process id, if /proc was read in time.
    pub parent_pid: Option<u32>,
    /// The executable's file name; the kernel's task name (`comm`, at most 15 bytes) when
    /// the executable could not be read.
    pub file_name: String,
    /// The executable's full path (`/proc/PID/exe`), as Defender's `FolderPath` holds
    /// the image's full path.
    pub folder_path: Option<String>,
    /// Arguments joined by spaces, at most [`MAX_COMMAND_LINE`](crate::capture::attribution::MAX_COMMAND_LINE) bytes.
    pub command_line: Option<String>,
    /// The user name of the uid that connected.
    pub account_name: Option<Arc<str>>,
    /// The uid that connected.
    pub uid: u32,
}

impl ProcessInfo {
    /// Whether a process scope (an indicator's `process`) names this process: an
    /// absolute path is compared with the executable's path, anything else with the
    /// file name reported for the flow. Case-sensitive, like Linux paths.
    pub fn is_named(&self, scope: &str) -> bool {
        if scope.starts_with('/') {
            self.folder_path.as_deref() == Some(scope)
        } else {
            self.file_name == scope
        }
    }
}

/// The `InitiatingProcess*` columns of an event; unknown ones are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessColumns(pub Arc<ProcessInfo>);

impl Serialize for ProcessColumns {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = &self.0;
        let mut st = s.serialize_struct("ProcessColumns", 6)?;
        st.serialize_field("InitiatingProcessId", &p.pid)?;
        st.serialize_field("InitiatingProcessFileName", &p.file_name)?;
        if let Some(v) = &p.folder_path {
            st.serialize_field("InitiatingProcessFolderPath", v)?;
        }
        if let Some(v) = &p.command_line {
            st.serialize_field("InitiatingProcessCommandLine", v)?;
        }
        if let Some(v) = &p.account_name {
            st.serialize_field("InitiatingProcessAccountName", &**v)?;
        }
        if let Some(v) = p.parent_pid {
            st.serialize_field("InitiatingProcessParentId", &v)?;
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_leave_out_what_is_unknown() {
        let info = ProcessInfo {
            pid: 7,
            file_name: "python3".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(ProcessColumns(Arc::new(info))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"InitiatingProcessId": 7, "InitiatingProcessFileName": "python3"})
        );
    }
}
