-- Workload 3 (JSON body): parse the whole response body, change one field, write it back.
--
-- Envoy's Lua filter has no JSON codec and no Lua library can be fetched here, so a small
-- pure-Lua codec written for the benchmark is inlined below. It is written for speed the way
-- a Lua user would (string.find with anchored patterns, table.concat buffers, locals), and
-- handles the whole JSON grammar: objects, arrays (kept as arrays through a metatable), strings
-- with escapes and \u (surrogate pairs too), numbers, true/false/null.

local json = {}
do
  local byte, sub, find, char, format, gsub = string.byte, string.sub, string.find, string.char, string.format, string.gsub
  local concat, floor, tonumber, type, pairs, getmetatable, setmetatable, error =
    table.concat, math.floor, tonumber, type, pairs, getmetatable, setmetatable, error

  local null = setmetatable({}, {__tostring = function() return "null" end})
  local array_mt = {}
  json.null, json.array_mt = null, array_mt

  -- Decoding.
  local unescape = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}

  local function utf8_char(cp)
    if cp < 0x80 then return char(cp) end
    if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
    if cp < 0x10000 then
      return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
    end
    return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
                0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end

  local function skip(s, i)
    local _, e = find(s, "^[ \n\r\t]*", i)
    return e + 1
  end

  local function decode_error(s, i, what)
    error(format("json: %s at byte %d", what, i))
  end

  local function decode_string(s, i) -- s[i] is the opening quote
    local j = i + 1
    local parts, n = nil, 0
    while true do
      local a = find(s, '["\\]', j)
      if a == nil then decode_error(s, i, "unterminated string") end
      if byte(s, a) == 34 then
        if parts == nil then return sub(s, i + 1, a - 1), a + 1 end
        n = n + 1; parts[n] = sub(s, j, a - 1)
        return concat(parts), a + 1
      end
      parts = parts or {}
      n = n + 1; parts[n] = sub(s, j, a - 1)
      local c = sub(s, a + 1, a + 1)
      if c == "u" then
        local cp = tonumber(sub(s, a + 2, a + 5), 16) or decode_error(s, a, "bad \\u escape")
        j = a + 6
        if cp >= 0xD800 and cp <= 0xDBFF and sub(s, j, j + 1) == "\\u" then
          local lo = tonumber(sub(s, j + 2, j + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            j = j + 6
          end
        end
        n = n + 1; parts[n] = utf8_char(cp)
      else
        n = n + 1; parts[n] = unescape[c] or decode_error(s, a, "bad escape")
        j = a + 2
      end
    end
  end

  local decode_value

  local function decode_array(s, i) -- after '['
    local t, n = setmetatable({}, array_mt), 0
    i = skip(s, i)
    if byte(s, i) == 93 then return t, i + 1 end
    while true do
      local v
      v, i = decode_value(s, i)
      n = n + 1; t[n] = v
      i = skip(s, i)
      local c = byte(s, i)
      if c == 93 then return t, i + 1 end
      if c ~= 44 then decode_error(s, i, "expected ',' or ']'") end
      i = skip(s, i + 1)
    end
  end

  local function decode_object(s, i) -- after '{'
    local t = {}
    i = skip(s, i)
    if byte(s, i) == 125 then return t, i + 1 end
    while true do
      if byte(s, i) ~= 34 then decode_error(s, i, "expected a key") end
      local k, v
      k, i = decode_string(s, i)
      i = skip(s, i)
      if byte(s, i) ~= 58 then decode_error(s, i, "expected ':'") end
      v, i = decode_value(s, skip(s, i + 1))
      t[k] = v
      i = skip(s, i)
      local c = byte(s, i)
      if c == 125 then return t, i + 1 end
      if c ~= 44 then decode_error(s, i, "expected ',' or '}'") end
      i = skip(s, i + 1)
    end
  end

  decode_value = function(s, i)
    local c = byte(s, i)
    if c == 123 then return decode_object(s, i + 1) end
    if c == 91 then return decode_array(s, i + 1) end
    if c == 34 then return decode_string(s, i) end
    if c == 116 and sub(s, i, i + 3) == "true" then return true, i + 4 end
    if c == 102 and sub(s, i, i + 4) == "false" then return false, i + 5 end
    if c == 110 and sub(s, i, i + 3) == "null" then return null, i + 4 end
    local _, e = find(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    if e == nil then decode_error(s, i, "unexpected character") end
    return tonumber(sub(s, i, e)) or decode_error(s, i, "bad number"), e + 1
  end

  function json.decode(s)
    local v, i = decode_value(s, skip(s, 1))
    i = skip(s, i)
    if i <= #s then decode_error(s, i, "trailing characters") end
    return v
  end

  -- Encoding.
  local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                   ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
  local function escape_char(c)
    return escapes[c] or format("\\u%04x", byte(c))
  end

  local function encode_string(s)
    if find(s, '[%c"\\]') == nil then return '"' .. s .. '"' end
    return '"' .. gsub(s, '[%c"\\]', escape_char) .. '"'
  end

  local encode_value
  encode_value = function(v, buf, n)
    local tv = type(v)
    if tv == "string" then
      n = n + 1; buf[n] = encode_string(v)
    elseif tv == "number" then
      n = n + 1
      if v == floor(v) and v > -1e15 and v < 1e15 then buf[n] = format("%d", v)
      elseif v ~= v or v == 1 / 0 or v == -1 / 0 then buf[n] = "null"
      else buf[n] = format("%.17g", v) end
    elseif tv == "boolean" then
      n = n + 1; buf[n] = v and "true" or "false"
    elseif v == nil or v == null then
      n = n + 1; buf[n] = "null"
    elseif tv == "table" then
      if getmetatable(v) == array_mt then
        n = n + 1; buf[n] = "["
        for k = 1, #v do
          if k > 1 then n = n + 1; buf[n] = "," end
          n = encode_value(v[k], buf, n)
        end
        n = n + 1; buf[n] = "]"
      else
        n = n + 1; buf[n] = "{"
        local first = true
        for k, val in pairs(v) do
          if not first then n = n + 1; buf[n] = "," end
          first = false
          n = n + 1; buf[n] = encode_string(type(k) == "string" and k or tostring(k))
          n = n + 1; buf[n] = ":"
          n = encode_value(val, buf, n)
        end
        n = n + 1; buf[n] = "}"
      end
    else
      error("json: cannot encode a " .. tv)
    end
    return n
  end

  function json.encode(v)
    local buf = {}
    local n = encode_value(v, buf, 0)
    return concat(buf, "", 1, n)
  end
end

function envoy_on_response(handle)
  local body = handle:body()
  if body == nil then return end
  local doc = json.decode(body:getBytes(0, body:length()))
  doc.status = "processed"
  body:setBytes(json.encode(doc))
end
