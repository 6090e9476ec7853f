//! The one integration-test binary: every test here runs the real `hookd` binary.
#![allow(clippy::unwrap_used)]

mod abuse;
mod api;
mod backends;
mod browser_access;
mod clients;
mod conformance;
mod console;
mod crash;
mod delivery;
mod enable;
mod faults;
mod filters;
mod fixture;
mod hostile;
mod limits;
mod metrics;
mod operate;
mod postgres;
mod readme;
mod redeliver;
mod retention;
mod security;
mod signing;
mod sim;
mod storage;
mod support;
mod tidy;
mod torture;
