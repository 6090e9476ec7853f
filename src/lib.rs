//! hookd: a self-hosted webhook daemon with an Apify-compatible API and a durable redb store.
//!
//! Layout: `config` (typed settings), `model` (domain types), `template` (Apify templates),
//! `store/` (the redb file and its single writer thread), `api/` (the HTTP API),
//! `app` (wiring, start-up and shutdown order), `sys` (clock and random source),
//! `sd_notify` (systemd readiness). See ARCHITECTURE.md.

pub mod api;
pub mod app;
pub mod config;
pub mod delivery;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod sd_notify;
pub mod store;
pub mod sys;
pub mod template;
