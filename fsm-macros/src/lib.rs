//! stub
extern crate proc_macro;
