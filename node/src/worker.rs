//! What every request handler on one worker thread shares.

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::settings::EdgeSettings;
use crate::store::ConfigStore;
use crate::upstream::UpstreamPool;

pub struct Worker {
    pub settings: Arc<EdgeSettings>,
    pub config: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// This worker's own backend connections.
    pub pool: Arc<UpstreamPool>,
}
