pub mod launch;
pub mod netstat;
pub mod procfs;
pub mod tcpinfo;
