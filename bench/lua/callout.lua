-- Workload 4 (callout): one call per request to a loopback service; a header of its answer is
-- copied into the request, which then goes on.
function envoy_on_request(handle)
  local headers, _ = handle:httpCall("callout", {
    [":method"] = "GET",
    [":path"] = "/callout",
    [":authority"] = "callout",
  }, "", 1000)
  local token = headers["x-auth-token"]
  if token ~= nil then
    handle:headers():add("x-auth", token)
  end
end
