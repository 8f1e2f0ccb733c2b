pub fn config(data: &[u8]) {
    let _ = proxy_rhai::config::PluginConfig::parse(data);
}
