//! c
pub struct Client;
pub struct BlockingClient;
pub struct Error;
