//! weft-cni, the CNI plugin that sets up traffic capture inside a pod's
//! network namespace. Built on the `capture` crate; filled by the CNI issue.
