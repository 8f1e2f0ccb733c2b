//! [`Host`] over the proxy-wasm ABI 0.2.1, for the wasm build.
//!
//! Each wrapper calls the ABI directly and hands every status back (the proxy-wasm SDK's
//! `hostcalls` panic on a status they do not expect, and a panic traps the VM).

use std::ptr::{null, null_mut};
use std::time::Duration;

use crate::header_map::HeaderMap;
use crate::host::{BufferType, Bytes, Host, LogLevel, MapType, MetricType, Status};

/// `proxy_continue_stream`'s stream types (the ABI's `StreamType`).
const STREAM_HTTP_REQUEST: u32 = 0;
const STREAM_HTTP_RESPONSE: u32 = 1;

/// The proxy the plugin runs in.
#[derive(Clone, Copy, Default)]
pub struct WasmHost;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: LogLevel, message_data: *const u8, message_size: usize) -> Status;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_set_header_map_pairs(
        map_type: MapType,
        map_data: *const u8,
        map_size: usize,
    ) -> Status;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> Status;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    // The type as a number: Higress's Redis reply is buffer type 9, which the ABI's
    // `BufferType` lacks.
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
    fn proxy_set_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_continue_stream(stream_type: u32) -> Status;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> Status;
    fn proxy_set_effective_context(context_id: u32) -> Status;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> Status;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status;
    fn proxy_record_metric(metric_id: u32, value: u64) -> Status;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> Status;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
}

// Higress's own host functions (not in Envoy's proxy-wasm ABI): only the Higress build imports
// them, as a proxy refuses a module importing a function it lacks.
#[cfg(feature = "higress")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_redis_init(
        cluster_data: *const u8,
        cluster_size: usize,
        username_data: *const u8,
        username_size: usize,
        password_data: *const u8,
        password_size: usize,
        timeout_ms: u32,
    ) -> u32;
    fn proxy_redis_call(
        cluster_data: *const u8,
        cluster_size: usize,
        query_data: *const u8,
        query_size: usize,
        return_token: *mut u32,
    ) -> u32;
}

/// Makes `context_id` the context later host calls act on.
pub(crate) fn set_effective_context(context_id: u32) -> Result<(), Status> {
    ok(unsafe { proxy_set_effective_context(context_id) })
}

/// A status of Higress's own functions, taken as a number: a value the ABI's `Status` lacks
/// would be undefined behaviour as that enum.
#[cfg(feature = "higress")]
fn status_of(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        3 => Err(Status::SerializationFailure),
        4 => Err(Status::ParseFailure),
        7 => Err(Status::Empty),
        8 => Err(Status::CasMismatch),
        _ => Err(Status::InternalFailure),
    }
}

/// Higress's buffer type of the Redis reply being delivered.
#[cfg(feature = "higress")]
const REDIS_CALL_RESPONSE_BUFFER: u32 = 9;

/// A property path as the ABI wants it: the segments joined by NUL.
fn property_path(path: &[&str]) -> Bytes {
    path.join("\0").into_bytes()
}

fn ok(status: Status) -> Result<(), Status> {
    match status {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`
/// (`src/wasm.rs`).
///
/// # Safety
/// `data` must be null or point to `size` bytes allocated by the guest allocator.
unsafe fn take_host_bytes(data: *mut u8, size: usize) -> Option<Bytes> {
    (!data.is_null()).then(|| Vec::from_raw_parts(data, size, size))
}

/// Up to `max_size` bytes of a host buffer from `start`.
fn buffer_bytes(buffer: u32, start: usize, max_size: usize) -> Result<Option<Bytes>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    match unsafe { proxy_get_buffer_bytes(buffer, start, max_size, &mut data, &mut size) } {
        Status::Ok => Ok(unsafe { take_host_bytes(data, size) }),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

impl Host for WasmHost {
    fn log(&self, level: LogLevel, message: &str) {
        // Logging cannot fail in a way the script could act on.
        let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
    }

    fn get_map(&self, map: MapType) -> Result<HeaderMap, Status> {
        let (mut data, mut size) = (null_mut(), 0);
        ok(unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) })?;
        Ok(unsafe { take_host_bytes(data, size) }
            .map(HeaderMap::from_abi)
            .unwrap_or_default())
    }

    fn set_map(&self, map: MapType, headers: &HeaderMap) -> Result<(), Status> {
        let bytes = headers.to_abi();
        ok(unsafe { proxy_set_header_map_pairs(map, bytes.as_ptr(), bytes.len()) })
    }

    fn get_map_value(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0);
        match unsafe {
            proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
        } {
            Status::Ok => Ok(unsafe { take_host_bytes(data, size) }.or(Some(Vec::new()))),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }

    fn replace_map_value(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        ok(unsafe {
            proxy_replace_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    fn remove_map_value(&self, map: MapType, name: &str) -> Result<(), Status> {
        ok(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
    }

    fn add_map_value(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        ok(unsafe {
            proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
        })
    }

    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Bytes>, Status> {
        buffer_bytes(buffer as u32, start, max_size)
    }

    fn set_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        ok(unsafe { proxy_set_buffer_bytes(buffer, start, size, data.as_ptr(), data.len()) })
    }

    fn send_http_response(
        &self,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<(), Status> {
        let headers = HeaderMap::abi_of(headers);
        ok(unsafe {
            proxy_send_local_response(
                status,
                null(),
                0,
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        })
    }

    fn resume_http_request(&self) -> Result<(), Status> {
        ok(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
    }

    fn resume_http_response(&self) -> Result<(), Status> {
        ok(unsafe { proxy_continue_stream(STREAM_HTTP_RESPONSE) })
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, Status> {
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let headers = HeaderMap::abi_of(&pairs);
        let trailers = HeaderMap::abi_of(&[]);
        let mut token = 0;
        ok(unsafe {
            proxy_http_call(
                cluster.as_ptr(),
                cluster.len(),
                headers.as_ptr(),
                headers.len(),
                if body.is_empty() {
                    null()
                } else {
                    body.as_ptr()
                },
                body.len(),
                trailers.as_ptr(),
                trailers.len(),
                u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                &mut token,
            )
        })?;
        // Its answer goes to the stream that made it.
        crate::wasm::callout_dispatched(token);
        Ok(token)
    }

    fn has_redis(&self) -> bool {
        cfg!(feature = "higress")
    }

    #[cfg(feature = "higress")]
    fn redis_init(
        &self,
        cluster: &str,
        username: &str,
        password: &str,
        timeout_ms: u32,
    ) -> Result<(), Status> {
        status_of(unsafe {
            proxy_redis_init(
                cluster.as_ptr(),
                cluster.len(),
                username.as_ptr(),
                username.len(),
                password.as_ptr(),
                password.len(),
                timeout_ms,
            )
        })
    }

    #[cfg(feature = "higress")]
    fn redis_call(&self, cluster: &str, query: &[u8]) -> Result<u32, Status> {
        let mut token = 0;
        status_of(unsafe {
            proxy_redis_call(
                cluster.as_ptr(),
                cluster.len(),
                query.as_ptr(),
                query.len(),
                &mut token,
            )
        })?;
        crate::wasm::redis_dispatched(token);
        Ok(token)
    }

    #[cfg(feature = "higress")]
    fn redis_reply(&self, max_size: usize) -> Result<Option<Bytes>, Status> {
        buffer_bytes(REDIS_CALL_RESPONSE_BUFFER, 0, max_size)
    }

    // The default build imports no Redis function: never called (`has_redis` is false).
    #[cfg(not(feature = "higress"))]
    fn redis_init(&self, _: &str, _: &str, _: &str, _: u32) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    #[cfg(not(feature = "higress"))]
    fn redis_call(&self, _: &str, _: &[u8]) -> Result<u32, Status> {
        Err(Status::InternalFailure)
    }

    #[cfg(not(feature = "higress"))]
    fn redis_reply(&self, _: usize) -> Result<Option<Bytes>, Status> {
        Err(Status::InternalFailure)
    }

    fn get_property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        let path = property_path(path);
        let (mut data, mut size) = (null_mut(), 0);
        match unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) } {
            Status::Ok => Ok(unsafe { take_host_bytes(data, size) }.or(Some(Vec::new()))),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), Status> {
        let path = property_path(path);
        ok(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
    }

    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Option<Bytes>, Status> {
        let (mut data, mut size) = (null_mut(), 0);
        ok(unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut size,
            )
        })?;
        Ok(unsafe { take_host_bytes(data, size) })
    }

    fn get_shared_data(&self, key: &str) -> Result<(Option<Bytes>, u32), Status> {
        let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
        match unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        } {
            Status::Ok => Ok((
                unsafe { take_host_bytes(data, size) }.or(Some(Vec::new())),
                cas,
            )),
            Status::NotFound => Ok((None, 0)),
            other => Err(other),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        ok(unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        })
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut id = 0;
        ok(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        ok(unsafe { proxy_increment_metric(id, offset) })
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        ok(unsafe { proxy_record_metric(id, value) })
    }

    fn get_metric(&self, id: u32) -> Result<u64, Status> {
        let mut value = 0;
        ok(unsafe { proxy_get_metric(id, &mut value) })?;
        Ok(value)
    }

    fn current_time_nanos(&self) -> Result<u64, Status> {
        let mut now = 0;
        ok(unsafe { proxy_get_current_time_nanoseconds(&mut now) })?;
        Ok(now)
    }

    fn set_tick_period(&self, period_ms: u32) -> Result<(), Status> {
        ok(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
    }

    fn heap_in_use(&self) -> Option<usize> {
        Some(crate::memory::in_use())
    }
}
